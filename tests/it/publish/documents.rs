//! What `publish --wait` makes of CodeDeploy's answers that moto's server cannot give
//! (ListDeploymentTargets, BatchGetDeploymentTargets, GetDeployment of a deployment that runs,
//! fails or succeeds): response documents shaped exactly as the AWS API reference's "Response
//! Syntax" of each call gives them, served in order by a scripted [`Aws`].

use std::{cell::RefCell, collections::VecDeque, time::Duration};

use expect_test::expect;
use serde_json::{Value, json};
use xtask::publish::{Aws, AwsError, Follow, Names, Service, explain, failure_report, follow};

/// Answers each call with the next scripted document, checking the call is the expected one.
struct Scripted {
    answers: RefCell<VecDeque<(&'static str, Result<Value, AwsError>)>>,
    calls: RefCell<Vec<String>>,
}

impl Scripted {
    fn new(answers: Vec<(&'static str, Result<Value, AwsError>)>) -> Scripted {
        Scripted { answers: RefCell::new(answers.into()), calls: RefCell::new(Vec::new()) }
    }
}

impl Aws for Scripted {
    fn call(&self, service: Service, command: &str, args: &[String]) -> Result<Value, AwsError> {
        let prefix = match service {
            Service::S3 => "s3api",
            Service::CodeDeploy => "deploy",
        };
        let call = format!("{prefix} {command} {}", args.join(" "));
        self.calls.borrow_mut().push(call.clone());
        let (expected, answer) =
            self.answers.borrow_mut().pop_front().unwrap_or_else(|| panic!("unexpected call: {call}"));
        assert_eq!(expected, command, "call {call}");
        answer
    }
}

const ID: &str = "d-A1B2C3D4E";

/// GetDeployment's response syntax: `{"deploymentInfo": {...}}` with the fields publish reads
/// and some it does not.
fn deployment(
    status: &str,
    overview: [i64; 6],
    error: Option<(&str, &str)>,
    rollback: Option<&str>,
) -> Value {
    let [pending, in_progress, succeeded, failed, skipped, ready] = overview;
    let mut info = json!({
        "applicationName": "shop",
        "deploymentGroupName": "prod",
        "deploymentConfigName": "CodeDeployDefault.OneAtATime",
        "deploymentId": ID,
        "status": status,
        "createTime": 1764496800.0,
        "creator": "user",
        "computePlatform": "Server",
        "revision": {
            "revisionType": "S3",
            "s3Location": {
                "bucket": "releases",
                "key": "ci/python-app/python-app-r-0123456789abcdef-x86_64.tgz",
                "bundleType": "tgz",
                "eTag": "7a9c9bb1781e311835297ebd58ef758c"
            }
        },
        "deploymentOverview": {
            "Pending": pending, "InProgress": in_progress, "Succeeded": succeeded,
            "Failed": failed, "Skipped": skipped, "Ready": ready
        },
        "deploymentStyle": { "deploymentOption": "WITHOUT_TRAFFIC_CONTROL", "deploymentType": "IN_PLACE" }
    });
    if let Some((code, message)) = error {
        info["errorInformation"] = json!({ "code": code, "message": message });
    }
    if let Some(rollback) = rollback {
        info["rollbackInfo"] = json!({
            "rollbackDeploymentId": rollback,
            "rollbackMessage": format!("Automatic rollback triggered by {ID}")
        });
    }
    json!({ "deploymentInfo": info })
}

/// ListDeploymentTargets' response syntax.
fn listed(ids: &[&str]) -> Value {
    json!({ "targetIds": ids })
}

/// One lifecycle event as BatchGetDeploymentTargets gives it.
fn event(name: &str, status: &str, times: Option<(f64, f64)>, diagnostics: Option<Value>) -> Value {
    let mut event = json!({ "lifecycleEventName": name, "status": status });
    if let Some((start, end)) = times {
        event["startTime"] = json!(start);
        event["endTime"] = json!(end);
    }
    if let Some(diagnostics) = diagnostics {
        event["diagnostics"] = diagnostics;
    }
    event
}

fn ok(name: &str, start: f64, seconds: f64) -> Value {
    let diagnostics =
        json!({ "errorCode": "Success", "message": "Succeeded", "logTail": "", "scriptName": "" });
    event(name, "Succeeded", Some((start, start + seconds)), Some(diagnostics))
}

fn pending(name: &str) -> Value {
    event(name, "Pending", None, None)
}

/// BatchGetDeploymentTargets' response syntax for EC2/on-premises targets.
fn targets(instances: &[(&str, &str, Vec<Value>)]) -> Value {
    let items: Vec<Value> = instances
        .iter()
        .map(|(id, status, events)| {
            json!({
                "deploymentTargetType": "InstanceTarget",
                "instanceTarget": {
                    "deploymentId": ID,
                    "targetId": id,
                    "targetArn": format!("arn:aws:ec2:eu-west-1:123456789012:instance/{id}"),
                    "status": status,
                    "lastUpdatedAt": 1764496900.0,
                    "lifecycleEvents": events
                }
            })
        })
        .collect();
    json!({ "deploymentTargets": items })
}

const EVENTS: [&str; 8] = [
    "ApplicationStop",
    "DownloadBundle",
    "BeforeInstall",
    "Install",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
    "End",
];

/// Events of an instance: the first `done` succeeded, then `rest` as given, then pending.
fn progress(done: usize, rest: Vec<Value>) -> Vec<Value> {
    let mut events: Vec<Value> =
        EVENTS[..done].iter().enumerate().map(|(i, e)| ok(e, 1764496810.0 + i as f64, 0.5)).collect();
    let n = done + rest.len();
    events.extend(rest);
    events.extend(EVENTS[n..].iter().map(|e| pending(e)));
    events
}

fn names() -> Names {
    Names { bucket: "releases".into(), application: "shop".into(), group: "prod".into(), config: None }
}

fn run(aws: &Scripted) -> (Result<xtask::publish::Outcome, xtask::publish::Stop>, String, usize) {
    let mut lines = String::new();
    let mut sleeps = 0;
    let options = Follow { interval: Duration::from_secs(5), timeout: Duration::from_secs(3600) };
    let outcome = follow(
        aws,
        ID,
        options,
        &names(),
        &mut |line| {
            lines.push_str(line);
            lines.push('\n');
        },
        &mut |_| sleeps += 1,
    );
    (outcome, lines, sleeps)
}

const FAILED_TAIL: &str = "[stdout]ValidateService: GET http://127.0.0.1:8000/healthz: 503 Service Unavailable (29 tries in 60 s)\n[stdout]service log (journalctl -u python-app -n 20):\n[stdout]  ImportError: cannot import name 'settings' from 'app'\n[stdout]reverted: current -> releases/r-1111111111111111, python-app restarted and healthy\n[stdout]ValidateService failed: r-0123456789abcdef is unhealthy; marked bad, back on r-1111111111111111\n";

#[test]
fn a_failed_deployment_prints_the_failing_event_and_the_hooks_last_lines() {
    let failed_event = event(
        "ValidateService",
        "Failed",
        Some((1764496830.0, 1764496891.25)),
        Some(json!({
            "errorCode": "ScriptFailed",
            "scriptName": "bin/deploy-hook",
            "message": "Script at specified location: bin/deploy-hook failed with exit code 1",
            "logTail": FAILED_TAIL
        })),
    );
    let mut failed_events = progress(6, vec![failed_event]);
    failed_events[7] = event("End", "Skipped", None, None);
    let aws = Scripted::new(vec![
        ("get-deployment", Ok(deployment("Created", [0; 6], None, None))),
        ("get-deployment", Ok(deployment("InProgress", [2, 0, 0, 0, 0, 0], None, None))),
        ("list-deployment-targets", Ok(listed(&["i-0aaa1111", "i-0bbb2222"]))),
        (
            "batch-get-deployment-targets",
            Ok(targets(&[
                ("i-0aaa1111", "InProgress", progress(3, vec![event("Install", "InProgress", None, None)])),
                ("i-0bbb2222", "Pending", progress(0, vec![])),
            ])),
        ),
        ("get-deployment", Ok(deployment("InProgress", [1, 1, 0, 0, 0, 0], None, None))),
        ("list-deployment-targets", Ok(listed(&["i-0aaa1111", "i-0bbb2222"]))),
        (
            "batch-get-deployment-targets",
            Ok(targets(&[
                (
                    "i-0aaa1111",
                    "InProgress",
                    progress(6, vec![event("ValidateService", "InProgress", None, None)]),
                ),
                ("i-0bbb2222", "Pending", progress(0, vec![])),
            ])),
        ),
        (
            "get-deployment",
            Ok(deployment(
                "Failed",
                [0, 0, 0, 1, 1, 0],
                Some((
                    "HEALTH_CONSTRAINTS",
                    "The overall deployment failed because too many individual instances failed deployment, too few healthy instances are available for deployment, or some instances in your deployment group are experiencing problems.",
                )),
                Some("d-ROLLBACK1"),
            )),
        ),
        ("list-deployment-targets", Ok(listed(&["i-0aaa1111", "i-0bbb2222"]))),
        (
            "batch-get-deployment-targets",
            Ok(targets(&[
                ("i-0aaa1111", "Failed", failed_events),
                ("i-0bbb2222", "Skipped", EVENTS.iter().map(|e| event(e, "Skipped", None, None)).collect()),
            ])),
        ),
    ]);
    let (outcome, lines, sleeps) = run(&aws);
    let outcome = outcome.unwrap();
    assert!(!outcome.succeeded());
    assert_eq!(sleeps, 3);
    assert!(
        aws.calls.borrow().contains(&format!(
            "deploy batch-get-deployment-targets --deployment-id {ID} --target-ids i-0aaa1111 i-0bbb2222"
        )),
        "{:?}",
        aws.calls.borrow()
    );
    expect![[r#"
        deployment d-A1B2C3D4E: Created
        deployment d-A1B2C3D4E: InProgress (instances: 2 Pending)
          i-0aaa1111  ApplicationStop: Succeeded in 0.5s
          i-0aaa1111  DownloadBundle: Succeeded in 0.5s
          i-0aaa1111  BeforeInstall: Succeeded in 0.5s
          i-0aaa1111: InProgress
          i-0bbb2222: Pending
        deployment d-A1B2C3D4E: InProgress (instances: 1 Pending, 1 InProgress)
          i-0aaa1111  Install: Succeeded in 0.5s
          i-0aaa1111  AfterInstall: Succeeded in 0.5s
          i-0aaa1111  ApplicationStart: Succeeded in 0.5s
        deployment d-A1B2C3D4E: Failed (instances: 1 Failed, 1 Skipped)
          i-0aaa1111  ValidateService: Failed in 61.2s
          i-0aaa1111  End: Skipped
          i-0aaa1111: Failed
          i-0bbb2222  ApplicationStop: Skipped
          i-0bbb2222  DownloadBundle: Skipped
          i-0bbb2222  BeforeInstall: Skipped
          i-0bbb2222  Install: Skipped
          i-0bbb2222  AfterInstall: Skipped
          i-0bbb2222  ApplicationStart: Skipped
          i-0bbb2222  ValidateService: Skipped
          i-0bbb2222  End: Skipped
          i-0bbb2222: Skipped
    "#]]
    .assert_eq(&lines);
    expect![[r#"
        deployment d-A1B2C3D4E failed: HEALTH_CONSTRAINTS: The overall deployment failed because too many individual instances failed deployment, too few healthy instances are available for deployment, or some instances in your deployment group are experiencing problems.
        instance i-0aaa1111 failed at ValidateService (ScriptFailed): Script at specified location: bin/deploy-hook failed with exit code 1
          script: bin/deploy-hook
          log tail (the last lines the hook printed, as CodeDeploy keeps them):
          | [stdout]ValidateService: GET http://127.0.0.1:8000/healthz: 503 Service Unavailable (29 tries in 60 s)
          | [stdout]service log (journalctl -u python-app -n 20):
          | [stdout]  ImportError: cannot import name 'settings' from 'app'
          | [stdout]reverted: current -> releases/r-1111111111111111, python-app restarted and healthy
          | [stdout]ValidateService failed: r-0123456789abcdef is unhealthy; marked bad, back on r-1111111111111111
        not deployed: i-0bbb2222 Skipped
        CodeDeploy rolls back with deployment d-ROLLBACK1 (aws deploy get-deployment --deployment-id d-ROLLBACK1)
    "#]]
    .assert_eq(&failure_report(&outcome));
}

#[test]
fn a_successful_deployment_and_more_than_25_instances() {
    let ids: Vec<String> = (0..30).map(|i| format!("i-{i:08x}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let done = |range: std::ops::Range<usize>| {
        let items: Vec<(&str, &str, Vec<Value>)> =
            id_refs[range].iter().map(|id| (*id, "Succeeded", progress(8, vec![]))).collect();
        targets(&items)
    };
    let aws = Scripted::new(vec![
        ("get-deployment", Ok(deployment("Succeeded", [0, 0, 30, 0, 0, 0], None, None))),
        ("list-deployment-targets", Ok(listed(&id_refs))),
        ("batch-get-deployment-targets", Ok(done(0..25))),
        ("batch-get-deployment-targets", Ok(done(25..30))),
    ]);
    let (outcome, lines, sleeps) = run(&aws);
    let outcome = outcome.unwrap();
    assert!(outcome.succeeded());
    assert_eq!(sleeps, 0);
    assert_eq!(outcome.targets.len(), 30);
    assert_eq!(lines.lines().next(), Some("deployment d-A1B2C3D4E: Succeeded (instances: 30 Succeeded)"));
    assert_eq!(lines.lines().filter(|l| l.ends_with(": Succeeded") && l.starts_with("  i-")).count(), 30);
    let calls = aws.calls.borrow();
    assert!(calls[2].ends_with(&format!("--target-ids {}", id_refs[..25].join(" "))), "{}", calls[2]);
    assert!(calls[3].ends_with(&format!("--target-ids {}", id_refs[25..].join(" "))), "{}", calls[3]);
}

#[test]
fn a_stopped_deployment_and_a_deployment_that_never_ends() {
    let aws = Scripted::new(vec![
        (
            "get-deployment",
            Ok(deployment(
                "Stopped",
                [1, 0, 0, 0, 0, 0],
                Some(("MANUAL_STOP", "The deployment was stopped by the user.")),
                None,
            )),
        ),
        ("list-deployment-targets", Ok(listed(&[]))),
    ]);
    let (outcome, _, _) = run(&aws);
    expect![[r#"
        deployment d-A1B2C3D4E stopped: MANUAL_STOP: The deployment was stopped by the user.
    "#]]
    .assert_eq(&failure_report(&outcome.unwrap()));

    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(("get-deployment", Ok(deployment("Queued", [0; 6], None, None))));
    }
    let aws = Scripted::new(answers);
    let mut lines = Vec::new();
    let options = Follow { interval: Duration::from_secs(5), timeout: Duration::from_secs(10) };
    let stop =
        follow(&aws, ID, options, &names(), &mut |l| lines.push(l.to_owned()), &mut |_| {}).unwrap_err();
    assert_eq!(lines, ["deployment d-A1B2C3D4E: Queued"]);
    assert_eq!(stop.code, 1);
    assert_eq!(
        stop.message,
        "deployment d-A1B2C3D4E is still Queued after 10s: it goes on in CodeDeploy; stop it with `aws deploy stop-deployment --deployment-id d-A1B2C3D4E`, or wait longer with --wait-timeout"
    );
}

#[test]
fn aws_errors_become_messages_that_say_what_to_fix() {
    let parse = |command: &str, stderr: &str| AwsError::parse(command, stderr);
    let err = parse(
        "deploy get-deployment",
        "\nAn error occurred (AccessDeniedException) when calling the GetDeployment operation: User: arn:aws:sts::123456789012:assumed-role/ci/gh is not authorized to perform: codedeploy:GetDeployment\n",
    );
    assert_eq!(err.code.as_deref(), Some("AccessDeniedException"));
    let explained = |err: &AwsError| explain(err, &names()).message;
    expect![[r#"access denied to aws deploy get-deployment: the credentials need codedeploy:GetDeployment (User: arn:aws:sts::123456789012:assumed-role/ci/gh is not authorized to perform: codedeploy:GetDeployment)"#]]
        .assert_eq(&explained(&err));
    let err = parse(
        "s3api put-object",
        "An error occurred (PermanentRedirect) when calling the PutObject operation: The bucket you are attempting to access must be addressed using the specified endpoint.",
    );
    expect![[r#"the bucket releases is in another region: CodeDeploy reads revisions from a bucket in the deployment group's region; set AWS_REGION to it, or use a bucket there"#]]
        .assert_eq(&explained(&err));
    let err = parse(
        "deploy create-deployment",
        "An error occurred (ExpiredTokenException) when calling the CreateDeployment operation: The security token included in the request is expired",
    );
    expect![[r#"the AWS credentials have expired (The security token included in the request is expired): refresh them (aws sso login, or a new role session)"#]]
        .assert_eq(&explained(&err));
    let err = parse(
        "s3api head-object",
        "\nYou must specify a region. You can also configure your region by running \"aws configure\".\n",
    );
    assert_eq!(err.code, None);
    expect![[r#"no AWS region: set AWS_REGION to the deployment group's region"#]]
        .assert_eq(&explained(&err));
    let err = parse(
        "deploy create-deployment",
        "An error occurred (DeploymentLimitExceededException) when calling the CreateDeployment operation: The Deployment Group 'prod' already has an active Deployment 'd-OTHER1234'",
    );
    expect![[r#"another deployment to prod is still running (The Deployment Group 'prod' already has an active Deployment 'd-OTHER1234'): wait for it, or stop it (aws deploy stop-deployment)"#]]
        .assert_eq(&explained(&err));
    // Anything else keeps the service's code and message.
    let err = parse(
        "deploy create-deployment",
        "An error occurred (ThrottlingException) when calling the CreateDeployment operation: Rate exceeded",
    );
    expect![[r#"aws deploy create-deployment failed: ThrottlingException: Rate exceeded"#]]
        .assert_eq(&explained(&err));
    assert_eq!(explain(&err, &names()).code, 2);
}

#[test]
fn a_failed_poll_is_retried_and_a_run_of_them_ends_the_follow_saying_the_deployment_goes_on() {
    let throttled = || {
        Err(AwsError::parse(
            "deploy get-deployment",
            "An error occurred (ThrottlingException) when calling the GetDeployment operation: Rate exceeded",
        ))
    };
    let aws = Scripted::new(vec![
        ("get-deployment", throttled()),
        ("get-deployment", Ok(deployment("Succeeded", [0, 0, 1, 0, 0, 0], None, None))),
        ("list-deployment-targets", Ok(listed(&["i-0aaa1111"]))),
        ("batch-get-deployment-targets", Ok(targets(&[("i-0aaa1111", "Succeeded", progress(8, vec![]))]))),
    ]);
    let (outcome, lines, sleeps) = run(&aws);
    assert!(outcome.unwrap().succeeded());
    assert_eq!(sleeps, 1);
    assert_eq!(
        lines.lines().next(),
        Some("  (aws deploy get-deployment failed: ThrottlingException: Rate exceeded; retrying in 5s)")
    );

    let aws = Scripted::new(vec![
        ("get-deployment", Ok(deployment("InProgress", [1, 0, 0, 0, 0, 0], None, None))),
        ("list-deployment-targets", throttled()),
        ("get-deployment", throttled()),
        ("get-deployment", throttled()),
    ]);
    let (outcome, _, _) = run(&aws);
    let stop = outcome.unwrap_err();
    assert_eq!(stop.code, 2);
    assert_eq!(
        stop.message,
        "cannot follow deployment d-A1B2C3D4E, which goes on in CodeDeploy: aws deploy get-deployment failed: ThrottlingException: Rate exceeded"
    );
}
