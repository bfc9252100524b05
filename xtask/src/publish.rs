//! `cargo xtask publish BUNDLE`: upload the revision to S3, start the CodeDeploy deployment and,
//! with `--wait`, follow it to the end, printing why each failed instance failed.
//!
//! AWS is reached through the aws CLI (v1 or v2), run without a shell and with `--output json`, so
//! credentials, region, profiles, SSO and web identity come from the standard chain exactly as the
//! team's other aws commands see them; ARCHITECTURE.md says why this is not the Rust SDK. Every
//! call goes through the [`Aws`] trait: [`AwsCli`] runs the CLI; the logic that reads CodeDeploy's
//! answers ([`follow`], [`failure_report`]) is tested with documents shaped as the API reference
//! gives them.
//!
//! Exit codes: 0 the deployment was created (and, with `--wait`, succeeded); 1 it failed or was
//! stopped (or is still running at `--wait-timeout`); 2 nothing was deployed because something
//! must be fixed first, or `--wait` could not follow the deployment (see [`Stop`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use packaging::{Manifest, Release, layout, manifest, reader};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{flags, verify};

/// S3's smallest part in a multipart upload (all but the last), in MiB.
pub const MIN_PART_MIB: u64 = 5;

/// CodeDeploy's cap on target ids per BatchGetDeploymentTargets call.
const TARGETS_PER_BATCH: usize = 25;

/// Why publishing stopped, with the exit code: 1 the deployment failed or was stopped, 2 it
/// could not run. The message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// The exit code.
    pub code: u8,
    /// What happened and what to do about it.
    pub message: String,
}

impl Stop {
    fn cannot(message: impl Into<String>) -> Stop {
        Stop { code: 2, message: message.into() }
    }
}

/// The two AWS services publish talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// S3, through `aws s3api`.
    S3,
    /// CodeDeploy, through `aws deploy`.
    CodeDeploy,
}

impl Service {
    fn cli_name(self) -> &'static str {
        match self {
            Service::S3 => "s3api",
            Service::CodeDeploy => "deploy",
        }
    }

    /// The service's own endpoint variable (`AWS_ENDPOINT_URL_<SERVICE>`).
    fn endpoint_var(self) -> &'static str {
        match self {
            Service::S3 => "AWS_ENDPOINT_URL_S3",
            Service::CodeDeploy => "AWS_ENDPOINT_URL_CODEDEPLOY",
        }
    }
}

/// A failed AWS call as the CLI reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    /// The CLI subcommand, e.g. `s3api head-object`.
    pub command: String,
    /// The service's error code (`NoSuchBucket`, `404`, ...), when the service answered.
    pub code: Option<String>,
    /// The message, or the CLI's whole error output when the service did not answer.
    pub message: String,
}

impl AwsError {
    /// Reads the CLI's error output: botocore prints a service error as
    /// `An error occurred (CODE) when calling the OPERATION operation: MESSAGE`; anything else
    /// (no credentials, no region, no connection) is kept whole.
    pub fn parse(command: &str, stderr: &str) -> AwsError {
        let text = stderr.trim();
        let parsed = text.find("An error occurred (").and_then(|start| {
            let rest = &text[start + "An error occurred (".len()..];
            let (code, rest) = rest.split_once(')')?;
            let message = rest.split_once(": ").map(|(_, m)| m.trim()).unwrap_or("");
            Some((code.to_owned(), message.to_owned()))
        });
        match parsed {
            Some((code, message)) => AwsError { command: command.to_owned(), code: Some(code), message },
            None => AwsError { command: command.to_owned(), code: None, message: text.to_owned() },
        }
    }

    fn is(&self, codes: &[&str]) -> bool {
        self.code.as_deref().is_some_and(|code| codes.contains(&code))
    }
}

impl std::fmt::Display for AwsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "aws {} failed: {code}: {}", self.command, self.message),
            None => write!(f, "aws {} failed: {}", self.command, self.message),
        }
    }
}

/// One AWS API call: `service`'s CLI subcommand `command` with `args`; the answer is the API's
/// response document.
pub trait Aws {
    /// Makes the call.
    fn call(&self, service: Service, command: &str, args: &[String]) -> Result<Value, AwsError>;
}

/// The aws CLI, run directly (no shell), with `--output json` and no pager.
#[derive(Debug, Clone)]
pub struct AwsCli {
    program: PathBuf,
}

impl AwsCli {
    /// The `aws` on PATH.
    pub fn find() -> Result<AwsCli, Stop> {
        match crate::find_in_path("aws") {
            Some(program) => Ok(AwsCli { program }),
            None => Err(Stop::cannot(
                "the aws CLI is not on PATH: install it (`pip install awscli`, or AWS CLI v2; GitHub's ubuntu runners have it)",
            )),
        }
    }

    /// The endpoint for `service` from `AWS_ENDPOINT_URL_<SERVICE>`, else `AWS_ENDPOINT_URL`,
    /// unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`. Passed as `--endpoint-url` so that CLIs
    /// older than the variables (v1 before 1.29, v2 before 2.13) honour them too.
    fn endpoint(service: Service) -> Option<String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        var(service.endpoint_var()).or_else(|| var("AWS_ENDPOINT_URL"))
    }
}

impl Aws for AwsCli {
    fn call(&self, service: Service, command: &str, args: &[String]) -> Result<Value, AwsError> {
        let mut cmd = std::process::Command::new(&self.program);
        cmd.args(["--output", "json"]);
        if let Some(endpoint) = AwsCli::endpoint(service) {
            cmd.args(["--endpoint-url", &endpoint]);
        }
        cmd.arg(service.cli_name()).arg(command).args(args).env("AWS_PAGER", "");
        cmd.stdin(std::process::Stdio::null());
        let name = format!("{} {command}", service.cli_name());
        let output = cmd.output().map_err(|err| AwsError {
            command: name.clone(),
            code: None,
            message: format!("cannot run {}: {err}", self.program.display()),
        })?;
        if !output.status.success() {
            return Err(AwsError::parse(&name, &String::from_utf8_lossy(&output.stderr)));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&stdout).map_err(|err| AwsError {
            command: name,
            code: None,
            message: format!("the aws CLI printed no JSON ({err}): {}", stdout.trim()),
        })
    }
}

/// The IAM permission an operation needs, for access-denied messages.
fn permission(command: &str) -> &'static str {
    match command {
        "s3api head-object" => {
            "s3:GetObject on the key, and s3:ListBucket on the bucket (without it a missing object is denied, not absent)"
        }
        "s3api put-object"
        | "s3api create-multipart-upload"
        | "s3api upload-part"
        | "s3api complete-multipart-upload" => "s3:PutObject on the key",
        "deploy get-deployment-group" => "codedeploy:GetDeploymentGroup on the deployment group",
        "deploy create-deployment" => {
            "codedeploy:CreateDeployment, codedeploy:GetDeploymentConfig, codedeploy:RegisterApplicationRevision and codedeploy:GetApplicationRevision"
        }
        "deploy get-deployment" => "codedeploy:GetDeployment",
        "deploy list-deployment-targets" => "codedeploy:ListDeploymentTargets",
        "deploy batch-get-deployment-targets" => "codedeploy:BatchGetDeploymentTargets",
        _ => "the permission for this call",
    }
}

/// What the names on the command line are, for error messages.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// The bucket.
    pub bucket: String,
    /// The CodeDeploy application.
    pub application: String,
    /// The deployment group.
    pub group: String,
    /// The deployment configuration, if given.
    pub config: Option<String>,
}

/// Turns a failed call into the message a CI log needs: what is wrong and what to fix. Every
/// one exits 2: nothing was deployed.
pub fn explain(err: &AwsError, names: &Names) -> Stop {
    let Names { bucket, application, group, .. } = names;
    let message = err.message.as_str();
    let text = if err.code.is_none() && message.contains("Unable to locate credentials") {
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE; in GitHub Actions, let aws-actions/configure-aws-credentials assume a role with OIDC (permissions: id-token: write)".to_owned()
    } else if err.code.is_none() && message.contains("must specify a region") {
        "no AWS region: set AWS_REGION to the deployment group's region".to_owned()
    } else if err.code.is_none() && message.contains("Could not connect to the endpoint URL") {
        format!("cannot reach AWS: {message} (check AWS_REGION, AWS_ENDPOINT_URL and the network)")
    } else if err.is(&["ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"]) {
        format!(
            "the AWS credentials have expired ({}): refresh them (aws sso login, or a new role session)",
            message
        )
    } else if err.is(&[
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
    ]) {
        format!(
            "the AWS credentials are not valid ({}): check the access key, secret and session token",
            message
        )
    } else if err.is(&["NoSuchBucket"]) {
        format!("the bucket {bucket} does not exist: create it in the deployment group's region, or fix --s3")
    } else if err.command.starts_with("s3api ") && err.is(&["301", "PermanentRedirect"]) {
        format!(
            "the bucket {bucket} is in another region: CodeDeploy reads revisions from a bucket in the deployment group's region; set AWS_REGION to it, or use a bucket there"
        )
    } else if err.is(&["AccessDenied", "AccessDeniedException", "403", "Forbidden"]) {
        format!(
            "access denied to aws {}: the credentials need {} ({message})",
            err.command,
            permission(&err.command)
        )
    } else if err.is(&["ApplicationDoesNotExistException"]) {
        format!(
            "the CodeDeploy application {application} does not exist in this account and region: create it (aws deploy create-application --application-name {application} --compute-platform Server), or fix --application"
        )
    } else if err.is(&["DeploymentGroupDoesNotExistException"]) {
        format!(
            "the deployment group {group} does not exist in the application {application}: create it (aws deploy create-deployment-group), or fix --deployment-group"
        )
    } else if err.is(&["DeploymentConfigDoesNotExistException"]) {
        format!(
            "the deployment configuration {} does not exist: use one of CodeDeployDefault.OneAtATime, CodeDeployDefault.HalfAtATime, CodeDeployDefault.AllAtOnce, or your own",
            names.config.as_deref().unwrap_or("?")
        )
    } else if err.is(&["DeploymentLimitExceededException"]) {
        format!(
            "another deployment to {group} is still running ({message}): wait for it, or stop it (aws deploy stop-deployment)"
        )
    } else {
        err.to_string()
    };
    Stop::cannot(text)
}

/// Where the revision goes: `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key prefix without leading or trailing slashes; may be empty.
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(text: &str) -> Result<S3Url, Stop> {
        let bad = |why: &str| Stop::cannot(format!("--s3 {text}: {why}; write it as s3://BUCKET/PREFIX"));
        let rest = text.strip_prefix("s3://").ok_or_else(|| bad("not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(bad(
                "the bucket name is not valid (3 to 63 lower-case letters, digits, dots and hyphens)",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == "." || part == "..") || prefix.contains("//") {
            return Err(bad("the prefix has an empty, `.` or `..` part"));
        }
        Ok(S3Url { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }

    /// The object key of a bundle: `PREFIX/APP/APP-REVISION-ARCH.tgz`.
    pub fn key(&self, app: &str, revision: &str, arch: &str) -> String {
        let name = format!("{app}/{app}-{revision}-{arch}.tgz");
        if self.prefix.is_empty() { name } else { format!("{}/{name}", self.prefix) }
    }
}

/// The bundle about to be published.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its path.
    pub path: PathBuf,
    /// `app` from release.yaml.
    pub app: String,
    /// The revision id (hash of the manifest).
    pub revision: String,
    /// `arch` from release.yaml.
    pub arch: String,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl Bundle {
    /// Reads what names the bundle: release.yaml and the manifest inside it, and the file's hash.
    pub fn read(path: &Path) -> Result<Bundle, Stop> {
        let shown = path.display();
        let mut magic = [0u8; 2];
        std::fs::File::open(path)
            .and_then(|mut file| file.read_exact(&mut magic))
            .map_err(|err| Stop::cannot(format!("cannot read {shown}: {err}")))?;
        if magic != [0x1f, 0x8b] {
            return Err(Stop::cannot(format!(
                "{shown} is not a .tgz: publish uploads the bundle `cargo xtask bundle` writes (bundleType=tgz)"
            )));
        }
        let revision = reader::read(path, &reader::Limits::default())
            .map_err(|err| Stop::cannot(format!("cannot read {shown}: {err}")))?;
        let text = |name: &str| {
            revision.data(name).and_then(|data| std::str::from_utf8(data).ok()).ok_or_else(|| {
                Stop::cannot(format!(
                    "{shown} has no readable {name}: publish takes the bundles `cargo xtask bundle` writes"
                ))
            })
        };
        let release = Release::parse(Path::new(layout::RELEASE_YAML), text(layout::RELEASE_YAML)?)
            .map_err(|err| Stop::cannot(format!("{shown}: {err}")))?;
        let revision_id = Manifest::revision_id(text(layout::MANIFEST)?);
        let (sha256, size) =
            manifest::hash_file(path).map_err(|err| Stop::cannot(format!("cannot read {shown}: {err}")))?;
        Ok(Bundle {
            path: path.to_owned(),
            app: release.app.as_str().to_owned(),
            revision: revision_id,
            arch: release.arch,
            sha256,
            size,
        })
    }
}

/// Where the revision is in S3, as CodeDeploy is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The object's ETag, without quotes (as `aws deploy push` sends it; the agent strips them).
    pub etag: String,
    /// The object's version id on a versioned bucket.
    pub version: Option<String>,
    /// False when an object with this key and sha256 was already there.
    pub uploaded: bool,
}

impl Location {
    /// The `revision` argument of CreateDeployment.
    pub fn revision_json(&self) -> Value {
        let mut s3 =
            json!({ "bucket": self.bucket, "key": self.key, "bundleType": "tgz", "eTag": self.etag });
        if let Some(version) = &self.version {
            s3["version"] = json!(version);
        }
        json!({ "revisionType": "S3", "s3Location": s3 })
    }
}

fn etag_of(doc: &Value) -> String {
    doc["ETag"].as_str().unwrap_or_default().trim_matches('"').to_owned()
}

fn version_of(doc: &Value) -> Option<String> {
    doc["VersionId"].as_str().filter(|v| !v.is_empty() && *v != "null").map(str::to_owned)
}

/// How progress is shown: a bar redrawn on a terminal, else one line per step.
pub(crate) struct Progress<'a> {
    say: &'a mut dyn FnMut(&str),
    bar: bool,
}

impl Progress<'_> {
    fn step(&mut self, done: u64, total: u64, part: usize, parts: usize) {
        let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
        if self.bar {
            let width = 30;
            let filled = (done * width / total.max(1)) as usize;
            let mut stderr = std::io::stderr();
            let _ = write!(
                stderr,
                "\rupload [{}{}] {:>3}%  {:.1} of {:.1} MiB, {part} of {parts} parts",
                "#".repeat(filled),
                "-".repeat(width as usize - filled),
                done * 100 / total.max(1),
                mib(done),
                mib(total)
            );
            if part == parts {
                let _ = writeln!(stderr);
            }
            let _ = stderr.flush();
        } else {
            (self.say)(&format!(
                "  upload part {part} of {parts}: {:.1} of {:.1} MiB",
                mib(done),
                mib(total)
            ));
        }
    }
}

/// Uploads `bundle` to `bucket`/`key` with its sha256 in the object's metadata, unless an object
/// with that key and sha256 is there already. Parts of `part_size` bytes when it is larger.
pub(crate) fn upload(
    aws: &dyn Aws,
    bundle: &Bundle,
    bucket: &str,
    key: &str,
    part_size: u64,
    progress: &mut Progress<'_>,
    names: &Names,
) -> Result<Location, Stop> {
    let s = |v: &str| v.to_owned();
    let fail = |err: AwsError| explain(&err, names);
    // No HeadBucket first: a missing bucket answers HeadObject with a bare 404 too, and the
    // upload then fails with NoSuchBucket, which names it; one aws process less per publish.
    match aws.call(Service::S3, "head-object", &[s("--bucket"), s(bucket), s("--key"), s(key)]) {
        Ok(head) => {
            let there = head["Metadata"]["sha256"].as_str().unwrap_or("");
            if there == bundle.sha256 {
                (progress.say)(&format!(
                    "upload    skipped: s3://{bucket}/{key} is there with the same sha256"
                ));
                return Ok(Location {
                    bucket: s(bucket),
                    key: s(key),
                    etag: etag_of(&head),
                    version: version_of(&head),
                    uploaded: false,
                });
            }
            let there =
                if there.is_empty() { "no sha256 metadata".to_owned() } else { format!("sha256 {there}") };
            (progress.say)(&format!(
                "upload    replacing s3://{bucket}/{key} ({there}): same revision, other bytes"
            ));
        }
        Err(err) if err.is(&["404", "NoSuchKey", "NotFound"]) => {}
        Err(err) => return Err(fail(err)),
    }
    let metadata = format!("sha256={}", bundle.sha256);
    let common = [s("--bucket"), s(bucket), s("--key"), s(key)];
    let done = if bundle.size <= part_size {
        let mut args = common.to_vec();
        args.extend([s("--body"), path_arg(&bundle.path)?, s("--metadata"), metadata]);
        args.extend([s("--content-type"), s("application/gzip")]);
        aws.call(Service::S3, "put-object", &args).map_err(fail)?
    } else {
        upload_parts(aws, bundle, &common, metadata, part_size, progress).map_err(fail)?
    };
    (progress.say)(&format!("upload    s3://{bucket}/{key} ({} bytes)", bundle.size));
    Ok(Location {
        bucket: s(bucket),
        key: s(key),
        etag: etag_of(&done),
        version: version_of(&done),
        uploaded: true,
    })
}

fn path_arg(path: &Path) -> Result<String, Stop> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Stop::cannot(format!("{} is not a UTF-8 path: move the bundle", path.display())))
}

/// A multipart upload; aborted when a part fails, so no half-uploaded parts stay billed.
fn upload_parts(
    aws: &dyn Aws,
    bundle: &Bundle,
    common: &[String],
    metadata: String,
    part_size: u64,
    progress: &mut Progress<'_>,
) -> Result<Value, AwsError> {
    let s = |v: &str| v.to_owned();
    let mut args = common.to_vec();
    args.extend([s("--metadata"), metadata, s("--content-type"), s("application/gzip")]);
    let started = aws.call(Service::S3, "create-multipart-upload", &args)?;
    let upload_id = started["UploadId"].as_str().unwrap_or_default().to_owned();
    let with_id = |extra: Vec<String>| {
        let mut args = common.to_vec();
        args.extend([s("--upload-id"), upload_id.clone()]);
        args.extend(extra);
        args
    };
    let local = |message: String| AwsError { command: "s3api upload-part".into(), code: None, message };
    let result = (|| {
        let parts = bundle.size.div_ceil(part_size) as usize;
        let mut file = std::fs::File::open(&bundle.path)
            .map_err(|err| local(format!("cannot read {}: {err}", bundle.path.display())))?;
        let dir =
            tempfile::tempdir().map_err(|err| local(format!("cannot make a temporary directory: {err}")))?;
        let mut done = Vec::new();
        let mut sent = 0u64;
        let mut buf = vec![0u8; part_size as usize];
        if progress.bar {
            progress.step(0, bundle.size, 0, parts);
        }
        for number in 1..=parts {
            let want = part_size.min(bundle.size - sent) as usize;
            file.read_exact(&mut buf[..want])
                .map_err(|err| local(format!("cannot read {}: {err}", bundle.path.display())))?;
            let part_path = dir.path().join("part");
            std::fs::write(&part_path, &buf[..want])
                .map_err(|err| local(format!("cannot write {}: {err}", part_path.display())))?;
            let answer = aws.call(
                Service::S3,
                "upload-part",
                &with_id(vec![
                    s("--part-number"),
                    number.to_string(),
                    s("--body"),
                    part_path.to_string_lossy().into_owned(),
                ]),
            )?;
            done.push(json!({ "ETag": answer["ETag"], "PartNumber": number }));
            sent += want as u64;
            progress.step(sent, bundle.size, number, parts);
        }
        let parts_json = serde_json::to_string(&json!({ "Parts": done })).expect("parts serialize");
        aws.call(
            Service::S3,
            "complete-multipart-upload",
            &with_id(vec![s("--multipart-upload"), parts_json]),
        )
    })();
    if result.is_err() {
        let _ = aws.call(Service::S3, "abort-multipart-upload", &with_id(Vec::new()));
    }
    result
}

/// CodeDeploy's `deploymentInfo` (GetDeployment), the fields publish reads.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentInfo {
    /// The id.
    pub deployment_id: String,
    /// Created, Queued, InProgress, Baking, Succeeded, Failed, Stopped or Ready.
    pub status: String,
    /// Why it failed.
    pub error_information: Option<ErrorInformation>,
    /// Instances by status.
    pub deployment_overview: Option<BTreeMap<String, i64>>,
    /// The automatic rollback, if one started.
    pub rollback_info: Option<RollbackInfo>,
}

/// `errorInformation` of a deployment.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
#[allow(missing_docs)]
pub struct ErrorInformation {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// `rollbackInfo` of a deployment.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
#[allow(missing_docs)]
pub struct RollbackInfo {
    pub rollback_deployment_id: Option<String>,
    pub rollback_triggering_deployment_id: Option<String>,
    pub rollback_message: Option<String>,
}

/// An EC2/on-premises deployment target (`instanceTarget` of BatchGetDeploymentTargets).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceTarget {
    /// The instance id.
    pub target_id: String,
    /// Pending, InProgress, Succeeded, Failed, Skipped, Unknown or Ready.
    pub status: String,
    /// Blue or Green in a blue/green deployment.
    pub instance_label: Option<String>,
    /// Every lifecycle event, in order.
    pub lifecycle_events: Vec<LifecycleEvent>,
}

/// One lifecycle event of an instance.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct LifecycleEvent {
    /// ApplicationStop, DownloadBundle, BeforeInstall, ...
    pub lifecycle_event_name: String,
    /// Pending, InProgress, Succeeded, Failed, Skipped or Unknown.
    pub status: String,
    /// What the agent reported for it.
    pub diagnostics: Option<Diagnostics>,
    /// Epoch seconds (the API) or a timestamp string (what some CLI versions print).
    pub start_time: Option<Value>,
    /// As `start_time`.
    pub end_time: Option<Value>,
}

/// `diagnostics` of a lifecycle event.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Diagnostics {
    /// Success, ScriptMissing, ScriptNotExecutable, ScriptTimedOut, ScriptFailed, UnknownError.
    pub error_code: Option<String>,
    /// The hook's location in the revision.
    pub script_name: Option<String>,
    /// The agent's message.
    pub message: Option<String>,
    /// The last 2048 characters the script printed, as the agent keeps them.
    pub log_tail: Option<String>,
}

impl LifecycleEvent {
    fn seconds(&self) -> Option<f64> {
        let (start, end) = (self.start_time.as_ref()?.as_f64()?, self.end_time.as_ref()?.as_f64()?);
        (end >= start).then_some(end - start)
    }
}

/// Parses a GetDeployment answer.
pub fn parse_deployment(doc: &Value) -> Result<DeploymentInfo, String> {
    DeploymentInfo::deserialize(&doc["deploymentInfo"]).map_err(|err| format!("GetDeployment answer: {err}"))
}

/// Parses a BatchGetDeploymentTargets answer: the instance targets.
pub fn parse_targets(doc: &Value) -> Result<Vec<InstanceTarget>, String> {
    let mut out = Vec::new();
    for target in doc["deploymentTargets"].as_array().into_iter().flatten() {
        if target["instanceTarget"].is_object() {
            let instance = InstanceTarget::deserialize(&target["instanceTarget"])
                .map_err(|err| format!("BatchGetDeploymentTargets answer: {err}"))?;
            out.push(instance);
        }
    }
    Ok(out)
}

const DONE: [&str; 3] = ["Succeeded", "Failed", "Stopped"];

/// Failed polls in a row before `follow` gives up.
const POLL_ATTEMPTS: usize = 3;

/// How a followed deployment ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The last GetDeployment answer.
    pub deployment: DeploymentInfo,
    /// The instances as last seen.
    pub targets: Vec<InstanceTarget>,
}

impl Outcome {
    /// True when the deployment succeeded.
    pub fn succeeded(&self) -> bool {
        self.deployment.status == "Succeeded"
    }
}

/// How to follow.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Time between polls.
    pub interval: Duration,
    /// Give up after this long (the deployment goes on).
    pub timeout: Duration,
}

/// Follows deployment `id` until it succeeds, fails or stops, saying a line per change: the
/// overall status with its instance counts, each instance's status, each lifecycle event as it
/// finishes. `sleep` waits between polls.
pub fn follow(
    aws: &dyn Aws,
    id: &str,
    options: Follow,
    names: &Names,
    say: &mut dyn FnMut(&str),
    sleep: &mut dyn FnMut(Duration),
) -> Result<Outcome, Stop> {
    let s = |v: &str| v.to_owned();
    let started = Instant::now();
    let mut last_line = String::new();
    let mut target_status: BTreeMap<String, String> = BTreeMap::new();
    let mut events_said: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut waited = Duration::ZERO;
    let mut failures = 0;
    loop {
        let polled =
            aws.call(Service::CodeDeploy, "get-deployment", &[s("--deployment-id"), s(id)]).and_then(|doc| {
                let deployment = parse_deployment(&doc).map_err(|message| AwsError {
                    command: "deploy get-deployment".into(),
                    code: None,
                    message,
                })?;
                let targets = if ["Created", "Queued"].contains(&deployment.status.as_str()) {
                    Vec::new()
                } else {
                    fetch_targets(aws, id)?
                };
                Ok((deployment, targets))
            });
        // The deployment exists and goes on whatever happens here: a failed poll (throttling,
        // the network) is retried, and only a run of them ends the follow, saying so.
        let (deployment, targets) = match polled {
            Ok(polled) => {
                failures = 0;
                polled
            }
            Err(err) => {
                failures += 1;
                if failures >= POLL_ATTEMPTS {
                    return Err(Stop::cannot(format!(
                        "cannot follow deployment {id}, which goes on in CodeDeploy: {}",
                        explain(&err, names).message
                    )));
                }
                say(&format!("  ({err}; retrying in {}s)", options.interval.as_secs()));
                sleep(options.interval);
                waited += options.interval;
                continue;
            }
        };
        let line = status_line(&deployment);
        if line != last_line {
            say(&line);
            last_line = line;
        }
        for target in &targets {
            let label = target.instance_label.as_deref().map(|l| format!(" ({l})")).unwrap_or_default();
            for (idx, event) in target.lifecycle_events.iter().enumerate() {
                let finished = ["Succeeded", "Failed", "Skipped"].contains(&event.status.as_str());
                if finished && events_said.insert((target.target_id.clone(), idx)) {
                    let took = event.seconds().map(|s| format!(" in {s:.1}s")).unwrap_or_default();
                    say(&format!(
                        "  {}{label}  {}: {}{took}",
                        target.target_id, event.lifecycle_event_name, event.status
                    ));
                }
            }
            if target_status.get(&target.target_id) != Some(&target.status) {
                say(&format!("  {}{label}: {}", target.target_id, target.status));
                target_status.insert(target.target_id.clone(), target.status.clone());
            }
        }
        if DONE.contains(&deployment.status.as_str()) {
            return Ok(Outcome { deployment, targets });
        }
        if started.elapsed().max(waited) >= options.timeout {
            return Err(Stop {
                code: 1,
                message: format!(
                    "deployment {id} is still {} after {}s: it goes on in CodeDeploy; stop it with `aws deploy stop-deployment --deployment-id {id}`, or wait longer with --wait-timeout",
                    deployment.status,
                    options.timeout.as_secs()
                ),
            });
        }
        sleep(options.interval);
        waited += options.interval;
    }
}

fn status_line(deployment: &DeploymentInfo) -> String {
    let mut line = format!("deployment {}: {}", deployment.deployment_id, deployment.status);
    if let Some(overview) = &deployment.deployment_overview {
        let counts: Vec<String> = ["Pending", "InProgress", "Succeeded", "Failed", "Skipped", "Ready"]
            .iter()
            .filter_map(|key| overview.get(*key).filter(|n| **n > 0).map(|n| format!("{n} {key}")))
            .collect();
        if !counts.is_empty() {
            line.push_str(&format!(" (instances: {})", counts.join(", ")));
        }
    }
    line
}

/// Every instance target of the deployment: ListDeploymentTargets (the CLI follows its pages),
/// then BatchGetDeploymentTargets by 25.
fn fetch_targets(aws: &dyn Aws, id: &str) -> Result<Vec<InstanceTarget>, AwsError> {
    let s = |v: &str| v.to_owned();
    let listed = aws.call(Service::CodeDeploy, "list-deployment-targets", &[s("--deployment-id"), s(id)])?;
    let ids: Vec<String> = listed["targetIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let mut targets = Vec::new();
    for chunk in ids.chunks(TARGETS_PER_BATCH) {
        let mut args = vec![s("--deployment-id"), s(id), s("--target-ids")];
        args.extend(chunk.iter().cloned());
        let doc = aws.call(Service::CodeDeploy, "batch-get-deployment-targets", &args)?;
        targets.extend(parse_targets(&doc).map_err(|message| AwsError {
            command: "deploy batch-get-deployment-targets".into(),
            code: None,
            message,
        })?);
    }
    Ok(targets)
}

/// What a failed or stopped deployment's log needs: the deployment's error, then for each failed
/// instance the failing event, its error code, the agent's message and the hook's last lines,
/// and the rollback CodeDeploy started, if any.
pub fn failure_report(outcome: &Outcome) -> String {
    let deployment = &outcome.deployment;
    let mut out = String::new();
    let error = deployment.error_information.as_ref();
    let code = error.and_then(|e| e.code.as_deref()).unwrap_or("");
    let message = error.and_then(|e| e.message.as_deref()).unwrap_or("");
    out.push_str(&format!("deployment {} {}", deployment.deployment_id, deployment.status.to_lowercase()));
    match (code.is_empty(), message.is_empty()) {
        (false, false) => out.push_str(&format!(": {code}: {message}\n")),
        (false, true) => out.push_str(&format!(": {code}\n")),
        (true, false) => out.push_str(&format!(": {message}\n")),
        (true, true) => out.push('\n'),
    }
    let failed: Vec<&InstanceTarget> = outcome.targets.iter().filter(|t| t.status == "Failed").collect();
    for target in &failed {
        match target.lifecycle_events.iter().find(|e| e.status == "Failed") {
            Some(event) => {
                let diag = event.diagnostics.clone().unwrap_or_default();
                out.push_str(&format!(
                    "instance {} failed at {} ({}): {}\n",
                    target.target_id,
                    event.lifecycle_event_name,
                    diag.error_code.as_deref().unwrap_or("no error code"),
                    diag.message.as_deref().unwrap_or("no message").trim()
                ));
                if let Some(script) = diag.script_name.as_deref().filter(|s| !s.is_empty()) {
                    out.push_str(&format!("  script: {script}\n"));
                }
                match diag.log_tail.as_deref().map(str::trim_end).filter(|t| !t.is_empty()) {
                    Some(tail) => {
                        out.push_str("  log tail (the last lines the hook printed, as CodeDeploy keeps them):\n");
                        for line in tail.lines() {
                            out.push_str(&format!("  | {line}\n"));
                        }
                    }
                    None => out.push_str("  no log tail: the event failed before or outside a hook script\n"),
                }
            }
            None => out.push_str(&format!(
                "instance {} failed with no failed lifecycle event: check the CodeDeploy agent there (its log: /var/log/aws/codedeploy-agent/codedeploy-agent.log)\n",
                target.target_id
            )),
        }
    }
    if failed.is_empty() && deployment.status == "Failed" {
        out.push_str("no instance failed: CodeDeploy failed the deployment itself (see the error above)\n");
    }
    let others: Vec<String> = outcome
        .targets
        .iter()
        .filter(|t| t.status != "Failed" && t.status != "Succeeded")
        .map(|t| format!("{} {}", t.target_id, t.status))
        .collect();
    if !others.is_empty() {
        out.push_str(&format!("not deployed: {}\n", others.join(", ")));
    }
    if let Some(rollback) =
        deployment.rollback_info.as_ref().and_then(|r| r.rollback_deployment_id.as_deref())
    {
        out.push_str(&format!(
            "CodeDeploy rolls back with deployment {rollback} (aws deploy get-deployment --deployment-id {rollback})\n"
        ));
    }
    out
}

/// Checks the deployment group before anything is uploaded: it exists and is EC2/on-premises.
fn check_group(aws: &dyn Aws, names: &Names) -> Result<(), Stop> {
    let s = |v: &str| v.to_owned();
    let doc = aws
        .call(
            Service::CodeDeploy,
            "get-deployment-group",
            &[s("--application-name"), s(&names.application), s("--deployment-group-name"), s(&names.group)],
        )
        .map_err(|err| explain(&err, names))?;
    let platform = doc["deploymentGroupInfo"]["computePlatform"].as_str().unwrap_or("Server");
    if platform != "Server" {
        return Err(Stop::cannot(format!(
            "the deployment group {} is for {platform}: a tgz revision deploys to an EC2/On-premises (Server) group",
            names.group
        )));
    }
    Ok(())
}

impl flags::Publish {
    /// Runs the command; see the module's exit codes.
    pub(crate) fn run(self) -> ExitCode {
        let json = self.json;
        let mut say = |line: &str| {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        };
        let mut record = json!({});
        let result = self.publish(&mut say, &mut record);
        let code = match &result {
            Ok(()) => 0,
            Err(stop) => {
                eprintln!("error: {}", stop.message);
                record["error"] = json!(stop.message);
                stop.code
            }
        };
        if json {
            record["exit_code"] = json!(code);
            println!("{}", serde_json::to_string_pretty(&record).expect("the record serializes"));
        } else if let Some(id) = record["deployment_id"].as_str() {
            println!("{id}");
        }
        ExitCode::from(code)
    }

    fn publish(&self, say: &mut dyn FnMut(&str), record: &mut Value) -> Result<(), Stop> {
        let target = S3Url::parse(&self.s3)?;
        if self.part_size < MIN_PART_MIB {
            return Err(Stop::cannot(format!(
                "--part-size {}: S3 parts are at least {MIN_PART_MIB} MiB",
                self.part_size
            )));
        }
        let names = Names {
            bucket: target.bucket.clone(),
            application: self.application.clone(),
            group: self.deployment_group.clone(),
            config: self.deployment_config.clone(),
        };
        let bundle = Bundle::read(&self.bundle)?;
        let shown = self.bundle.display().to_string();
        say(&format!(
            "bundle    {} {} {} ({} bytes, sha256 {})",
            bundle.app, bundle.revision, bundle.arch, bundle.size, bundle.sha256
        ));
        let options = verify::Options { systemd_analyze: true, ..verify::Options::default() };
        let report = verify::verify(&self.bundle, &options)
            .map_err(|err| Stop::cannot(format!("cannot verify {shown}: {err}")))?;
        let errors = report.errors();
        if !report.findings.is_empty() {
            for line in report.render_human(&shown).lines() {
                say(line);
            }
        }
        if errors > 0 {
            if !self.allow_verify_errors {
                return Err(Stop::cannot(format!(
                    "verify found {errors} error{} in {shown}: fix them and bundle again (or pass --allow-verify-errors to publish it anyway)",
                    if errors == 1 { "" } else { "s" }
                )));
            }
            let warning = format!(
                "WARNING: publishing {shown} although verify found {errors} error{} (--allow-verify-errors): expect the deployment to fail",
                if errors == 1 { "" } else { "s" }
            );
            eprintln!("{warning}");
        } else if report.findings.is_empty() {
            say(&format!("verify    {shown}: ok"));
        }
        let aws = AwsCli::find()?;
        check_group(&aws, &names)?;
        let key = target.key(&bundle.app, &bundle.revision, &bundle.arch);
        let bar = std::io::stderr().is_terminal();
        let mut progress = Progress { say: &mut *say, bar };
        let location =
            upload(&aws, &bundle, &target.bucket, &key, self.part_size * 1024 * 1024, &mut progress, &names)?;
        *record = json!({
            "bundle": shown,
            "app": bundle.app,
            "revision": bundle.revision,
            "arch": bundle.arch,
            "sha256": bundle.sha256,
            "size": bundle.size,
            "bucket": location.bucket,
            "key": location.key,
            "etag": location.etag,
            "version": location.version,
            "uploaded": location.uploaded,
        });
        if errors > 0 {
            record["verify_errors_overridden"] = json!(errors);
        }
        let s = |v: &str| v.to_owned();
        let description = self.description.clone().unwrap_or_else(|| {
            format!(
                "{} {} {}{}",
                bundle.app,
                bundle.revision,
                bundle.arch,
                if errors > 0 { " UNVERIFIED" } else { "" }
            )
        });
        let mut args = vec![
            s("--application-name"),
            s(&names.application),
            s("--deployment-group-name"),
            s(&names.group),
            s("--revision"),
            location.revision_json().to_string(),
            s("--description"),
            description,
        ];
        if let Some(config) = &self.deployment_config {
            args.extend([s("--deployment-config-name"), s(config)]);
        }
        if let Some(behavior) = self.file_exists_behavior {
            args.extend([s("--file-exists-behavior"), s(behavior.api_name())]);
        }
        let created =
            aws.call(Service::CodeDeploy, "create-deployment", &args).map_err(|err| explain(&err, &names))?;
        let id = created["deploymentId"]
            .as_str()
            .ok_or_else(|| {
                Stop::cannot(format!("CreateDeployment answered without a deploymentId: {created}"))
            })?
            .to_owned();
        record["deployment_id"] = json!(id);
        say(&format!(
            "deployment {id} created: {} to {}/{}",
            bundle.revision, names.application, names.group
        ));
        if !self.wait {
            return Ok(());
        }
        let options = Follow {
            interval: Duration::from_secs(self.poll_interval.max(1)),
            timeout: Duration::from_secs(self.wait_timeout),
        };
        let outcome = follow(&aws, &id, options, &names, say, &mut std::thread::sleep)?;
        record["status"] = json!(outcome.deployment.status);
        if outcome.succeeded() {
            say(&format!("deployment {id} succeeded"));
            return Ok(());
        }
        let report = failure_report(&outcome);
        for line in report.lines() {
            say(line);
        }
        record["failure"] = json!(report);
        Err(Stop {
            code: 1,
            message: format!(
                "deployment {id} {}: read the failing event and the hook's last lines above",
                outcome.deployment.status.to_lowercase()
            ),
        })
    }
}
