//! `cargo xtask publish`: against a real local AWS API (moto's server, started here on a free
//! loopback port) for S3 and the CodeDeploy calls it implements; the calls it lacks
//! (ListDeploymentTargets, BatchGetDeploymentTargets, and GetDeployment of a running or failed
//! deployment) from response documents shaped as the AWS API reference gives them.

mod documents;

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::sandbox::free_port;

/// A moto server on 127.0.0.1, killed when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; .ci/run installs it)");
        let mut moto = Moto { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(moto.child.try_wait().unwrap().is_none(), "moto_server exited before listening");
            assert!(Instant::now() < deadline, "moto_server did not listen on {port} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// The environment of a CI job pointed at this server, isolated from the machine's own
    /// AWS configuration.
    fn env(&self, cmd: &mut Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL_CODEDEPLOY",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &self.url)
            .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    /// `aws ARGS` against the server; its JSON answer.
    fn aws(&self, args: &[&str]) -> Value {
        let mut cmd = Command::new("aws");
        self.env(&mut cmd);
        let output = cmd.args(["--output", "json"]).args(args).output().expect("the aws CLI");
        assert!(output.status.success(), "aws {args:?}\n{}", tests::describe(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).unwrap() }
    }

    /// A bucket (versioned or not), an EC2/on-prem application and a deployment group.
    fn setup(&self, bucket: &str, versioned: bool) {
        self.aws(&["s3api", "create-bucket", "--bucket", bucket]);
        if versioned {
            self.aws(&[
                "s3api",
                "put-bucket-versioning",
                "--bucket",
                bucket,
                "--versioning-configuration",
                "Status=Enabled",
            ]);
        }
        self.aws(&[
            "deploy",
            "create-application",
            "--application-name",
            "shop",
            "--compute-platform",
            "Server",
        ]);
        self.aws(&[
            "deploy",
            "create-deployment-group",
            "--application-name",
            "shop",
            "--deployment-group-name",
            "prod",
            "--service-role-arn",
            "arn:aws:iam::123456789012:role/CodeDeployService",
        ]);
    }

    fn publish(&self, bundle: &Path, s3: &str, extra: &[&str]) -> Output {
        self.publish_to(bundle, "shop", "prod", s3, extra)
    }

    fn publish_to(&self, bundle: &Path, application: &str, group: &str, s3: &str, extra: &[&str]) -> Output {
        let mut cmd = xtask_publish(bundle, application, group, s3, extra);
        self.env(&mut cmd);
        cmd.output().expect("running cargo xtask publish")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cargo xtask publish BUNDLE --application APP --deployment-group GROUP --s3 S3 EXTRA...`.
fn xtask_publish(bundle: &Path, application: &str, group: &str, s3: &str, extra: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(tests::project_root())
        .args(["xtask", "publish"])
        .arg(bundle)
        .args(["--application", application, "--deployment-group", group, "--s3", s3])
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The deployment id: the last stdout line.
fn deployment_id(output: &Output) -> String {
    stdout(output).lines().last().expect("a last stdout line").to_owned()
}

fn sha256_file(path: &Path) -> String {
    packaging::manifest::hash_file(path).unwrap().0
}

/// The object's bytes, as S3 serves them.
fn object_bytes(moto: &Moto, bucket: &str, key: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join("downloaded.tgz");
    moto.aws(&["s3api", "get-object", "--bucket", bucket, "--key", key, out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

fn expected_key(prefix: &str, bundle: &Path) -> String {
    // The bundle's file name is APP-REVISION-ARCH.tgz, which the key must name too.
    let name = bundle.file_name().unwrap().to_str().unwrap();
    format!("{prefix}/python-app/{name}")
}

#[test]
fn publish_uploads_once_and_creates_the_deployment() {
    let moto = Moto::start();
    moto.setup("releases", false);
    let bundle = tests::example_bundle();
    let dir = tempfile::tempdir().unwrap();

    let first = moto.publish(bundle, "s3://releases/ci/", &["--description", "build 42"]);
    assert_eq!(first.status.code(), Some(0), "{}", tests::describe(&first));
    let key = expected_key("ci", bundle);
    assert!(stdout(&first).contains(&format!("upload    s3://releases/{key} (")), "{}", stdout(&first));

    // The object: the bundle's bytes, its sha256 in the metadata.
    assert_eq!(object_bytes(&moto, "releases", &key, dir.path()), std::fs::read(bundle).unwrap());
    let head = moto.aws(&["s3api", "head-object", "--bucket", "releases", "--key", &key]);
    assert_eq!(head["Metadata"]["sha256"].as_str(), Some(sha256_file(bundle).as_str()));
    let etag = head["ETag"].as_str().unwrap().trim_matches('"').to_owned();

    // The deployment: that object, as a tgz, with its ETag, and the description.
    let id = deployment_id(&first);
    let info = &moto.aws(&["deploy", "get-deployment", "--deployment-id", &id])["deploymentInfo"];
    let s3 = &info["revision"]["s3Location"];
    assert_eq!(info["revision"]["revisionType"], "S3");
    assert_eq!(s3["bucket"], "releases");
    assert_eq!(s3["key"].as_str(), Some(key.as_str()));
    assert_eq!(s3["bundleType"], "tgz");
    assert_eq!(s3["eTag"].as_str(), Some(etag.as_str()));
    assert!(s3.get("version").is_none(), "no version on an unversioned bucket: {s3}");
    assert_eq!(info["description"], "build 42");
    assert_eq!(
        (info["applicationName"].as_str(), info["deploymentGroupName"].as_str()),
        (Some("shop"), Some("prod"))
    );

    // Again: the upload is skipped, saying so, and a new deployment points at the same object.
    let second = moto.publish(bundle, "s3://releases/ci", &["--json"]);
    assert_eq!(second.status.code(), Some(0), "{}", tests::describe(&second));
    assert!(
        stderr(&second)
            .contains(&format!("upload    skipped: s3://releases/{key} is there with the same sha256")),
        "{}",
        tests::describe(&second)
    );
    let record: Value = serde_json::from_str(&stdout(&second)).expect("--json prints one JSON object");
    assert_eq!(record["uploaded"], false);
    assert_eq!(record["etag"].as_str(), Some(etag.as_str()));
    assert_eq!(record["sha256"].as_str(), Some(sha256_file(bundle).as_str()));
    assert_eq!(record["exit_code"], 0);
    let second_id = record["deployment_id"].as_str().unwrap();
    assert_ne!(second_id, id);
    let info = &moto.aws(&["deploy", "get-deployment", "--deployment-id", second_id])["deploymentInfo"];
    assert_eq!(info["revision"]["s3Location"]["eTag"].as_str(), Some(etag.as_str()));
    // The default description names the app, revision and arch.
    let name = bundle.file_stem().unwrap().to_str().unwrap();
    let revision = name.trim_start_matches("python-app-").trim_end_matches("-x86_64");
    assert_eq!(info["description"].as_str(), Some(format!("python-app {revision} x86_64").as_str()));

    // --wait reads GetDeployment from the server; moto's deployments stay Created (no agent), so
    // following one ends at --wait-timeout: exit 1, the deployment id still the last line.
    let waited =
        moto.publish(bundle, "s3://releases/ci", &["--wait", "--wait-timeout", "1", "--poll-interval", "1"]);
    assert_eq!(waited.status.code(), Some(1), "{}", tests::describe(&waited));
    let id = deployment_id(&waited);
    assert!(
        stdout(&waited).contains(&format!("\ndeployment {id}: Created\n")),
        "{}",
        tests::describe(&waited)
    );
    assert!(
        stderr(&waited)
            .contains(&format!("error: deployment {id} is still Created after 1s: it goes on in CodeDeploy")),
        "{}",
        tests::describe(&waited)
    );
}

#[test]
fn versioned_bucket_and_multipart_upload() {
    let moto = Moto::start();
    moto.setup("versioned-releases", true);
    let dir = tempfile::tempdir().unwrap();
    // An app whose bundle is over 5 MiB: random bytes do not compress.
    let app = dir.path().join("app");
    tests::copy_tree(&tests::example_app(), &app).unwrap();
    let mut noise = vec![0u8; 6 * 1024 * 1024];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut noise {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(app.join("src/noise.bin"), &noise).unwrap();
    let bundle = tests::build_bundle(&app, &dir.path().join("dist"), &[]).unwrap();
    assert!(std::fs::metadata(&bundle).unwrap().len() > 6 * 1024 * 1024);

    // The per-service endpoint variables win over AWS_ENDPOINT_URL, here a closed port.
    let mut cmd = xtask_publish(&bundle, "shop", "prod", "s3://versioned-releases", &["--part-size", "5"]);
    moto.env(&mut cmd);
    cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", free_port()))
        .env("AWS_ENDPOINT_URL_S3", &moto.url)
        .env("AWS_ENDPOINT_URL_CODEDEPLOY", &moto.url);
    let output = cmd.output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", tests::describe(&output));
    let out = stdout(&output);
    // The vendored wheels and uv make the bundle several parts of 5 MiB.
    let size = std::fs::metadata(&bundle).unwrap().len();
    let parts = size.div_ceil(5 * 1024 * 1024);
    assert!(
        out.contains(&format!("  upload part 1 of {parts}: 5.0 of "))
            && out.contains(&format!("  upload part {parts} of {parts}: ")),
        "{out}"
    );
    let key = format!("python-app/{}", bundle.file_name().unwrap().to_str().unwrap());
    assert_eq!(object_bytes(&moto, "versioned-releases", &key, dir.path()), std::fs::read(&bundle).unwrap());
    let head = moto.aws(&["s3api", "head-object", "--bucket", "versioned-releases", "--key", &key]);
    assert_eq!(head["Metadata"]["sha256"].as_str(), Some(sha256_file(&bundle).as_str()));
    let etag = head["ETag"].as_str().unwrap().trim_matches('"');
    assert!(etag.ends_with(&format!("-{parts}")), "a {parts}-part upload's ETag: {etag}");
    let version = head["VersionId"].as_str().expect("a versioned bucket gives a version id");

    let info = &moto.aws(&["deploy", "get-deployment", "--deployment-id", &deployment_id(&output)])["deploymentInfo"];
    let s3 = &info["revision"]["s3Location"];
    assert_eq!(s3["eTag"].as_str(), Some(etag));
    assert_eq!(s3["version"].as_str(), Some(version));
    assert_eq!(s3["bundleType"], "tgz");
}

#[test]
fn what_cannot_run_exits_2_saying_what_to_fix() {
    let moto = Moto::start();
    moto.setup("releases", false);
    let bundle = tests::example_bundle();
    let dir = tempfile::tempdir().unwrap();
    let no_object = |moto: &Moto| {
        let listed = moto.aws(&["s3api", "list-objects-v2", "--bucket", "releases"]);
        assert!(listed.get("Contents").is_none(), "nothing uploaded: {listed}");
    };

    let check = |output: Output, message: &str| {
        assert_eq!(output.status.code(), Some(2), "{}", tests::describe(&output));
        assert!(stderr(&output).contains(message), "expected {message:?}\n{}", tests::describe(&output));
    };
    check(
        moto.publish(bundle, "s3://no-such-bucket/ci", &[]),
        "error: the bucket no-such-bucket does not exist: create it in the deployment group's region, or fix --s3",
    );
    check(
        moto.publish_to(bundle, "shopp", "prod", "s3://releases/ci", &[]),
        "error: the CodeDeploy application shopp does not exist in this account and region: create it (aws deploy create-application --application-name shopp --compute-platform Server), or fix --application",
    );
    check(
        moto.publish_to(bundle, "shop", "staging", "s3://releases/ci", &[]),
        "error: the deployment group staging does not exist in the application shop",
    );

    let mut cmd = xtask_publish(bundle, "shop", "prod", "s3://releases/ci", &[]);
    moto.env(&mut cmd);
    cmd.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    check(
        cmd.output().unwrap(),
        "error: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    );
    no_object(&moto);

    // Bad flags never reach AWS.
    check(moto.publish(bundle, "https://releases/ci", &[]), "--s3 https://releases/ci: not an s3:// URL");
    check(moto.publish(bundle, "s3://releases/ci", &["--part-size", "1"]), "S3 parts are at least 5 MiB");
    check(moto.publish(&dir.path().join("missing.tgz"), "s3://releases/ci", &[]), "cannot read ");

    // A bundle verify finds errors in: refused, nothing uploaded; with the override, published
    // with a loud warning.
    let tampered = tampered_bundle(bundle, dir.path());
    let refused = moto.publish(&tampered, "s3://releases/ci", &[]);
    assert!(stdout(&refused).contains("error[manifest."), "{}", tests::describe(&refused));
    check(refused, "verify found 1 error in ");
    no_object(&moto);
    let forced = moto.publish(&tampered, "s3://releases/ci", &["--allow-verify-errors"]);
    assert_eq!(forced.status.code(), Some(0), "{}", tests::describe(&forced));
    assert!(
        stderr(&forced).contains("WARNING: publishing ")
            && stderr(&forced).contains("although verify found 1 error"),
        "{}",
        tests::describe(&forced)
    );
    let info = &moto.aws(&["deploy", "get-deployment", "--deployment-id", &deployment_id(&forced)])["deploymentInfo"];
    assert!(info["description"].as_str().unwrap().ends_with(" UNVERIFIED"), "{info}");
}

/// The example bundle with src/app.py changed after the manifest was written.
fn tampered_bundle(bundle: &Path, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    tests::run_ok(Command::new("tar").arg("-xzpf").arg(bundle).arg("-C").arg(&tree)).unwrap();
    let app = tree.join("src/app.py");
    let mut text = std::fs::read_to_string(&app).unwrap();
    text.push_str("# changed after bundling\n");
    std::fs::write(&app, text).unwrap();
    let out = dir.join("tampered.tgz");
    let mut names: Vec<String> =
        std::fs::read_dir(&tree).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    tests::run_ok(Command::new("tar").arg("-czf").arg(&out).arg("-C").arg(&tree).args(&names)).unwrap();
    out
}

#[test]
fn s3_urls_and_keys() {
    use xtask::publish::S3Url;
    let url = S3Url::parse("s3://shop-releases/ci/prod/").unwrap();
    assert_eq!((url.bucket.as_str(), url.prefix.as_str()), ("shop-releases", "ci/prod"));
    assert_eq!(
        url.key("shop", "r-0123456789abcdef", "aarch64"),
        "ci/prod/shop/shop-r-0123456789abcdef-aarch64.tgz"
    );
    let bare = S3Url::parse("s3://shop-releases").unwrap();
    assert_eq!(bare.key("shop", "r-0123456789abcdef", "x86_64"), "shop/shop-r-0123456789abcdef-x86_64.tgz");
    for (bad, why) in [
        ("shop-releases/ci", "not an s3:// URL"),
        (
            "s3://Shop_Releases/ci",
            "the bucket name is not valid (3 to 63 lower-case letters, digits, dots and hyphens)",
        ),
        ("s3://ab/ci", "the bucket name is not valid (3 to 63 lower-case letters, digits, dots and hyphens)"),
        ("s3://shop-releases/ci/../other", "the prefix has an empty, `.` or `..` part"),
        ("s3://shop-releases/ci//x", "the prefix has an empty, `.` or `..` part"),
    ] {
        let stop = S3Url::parse(bad).unwrap_err();
        assert_eq!(stop.code, 2);
        assert_eq!(stop.message, format!("--s3 {bad}: {why}; write it as s3://BUCKET/PREFIX"), "{bad}");
    }
}
