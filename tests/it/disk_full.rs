//! A full disk, for real: the app user's home (the app root's parent) is a small ext4 image
//! with 5 % reserved blocks, loop-mounted in the sandbox; the deployment archive and the state
//! directory stay on the normal filesystem (the bundled uv alone is 44 MiB). The app user fills
//! it: root could still write into the reserved blocks, and AfterInstall must refuse anyway,
//! saying so, before it writes anything; with space again, the same deployment goes through. A
//! post-install command that fills the disk itself fails with what is left where.

use std::{
    fs,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

use tests::{
    build_bundle, describe, edit_file, path_str, run_ok,
    sandbox::{APP_UID, Sandbox, free_port, revisions_a_and_b},
};

use crate::after_install::{
    assert_current_complete, assert_failed, assert_nothing_half_built, assert_ok, assert_unit_is_current,
};

/// A loop-mounted filesystem, unmounted when dropped (lazily if it is still busy).
struct LoopMount {
    at: PathBuf,
}

impl LoopMount {
    /// Makes an ext4 image of `mib` MiB with 5 % of its blocks reserved for root at `image` and
    /// mounts it on `at`, its root directory the app user's (mode 0755) as a home is.
    fn new(image: &Path, at: &Path, mib: u64) -> LoopMount {
        run_ok(Command::new("truncate").arg("-s").arg(format!("{mib}M")).arg(image)).expect("truncate");
        run_ok(Command::new("mkfs.ext4").args(["-q", "-m", "5"]).arg(image))
            .expect("mkfs.ext4 is needed (Debian: apt-get install e2fsprogs)");
        run_ok(Command::new("mount").args(["-o", "loop"]).arg(image).arg(at))
            .expect("mount -o loop is needed (root, a loop device)");
        let guard = LoopMount { at: at.to_path_buf() };
        std::os::unix::fs::chown(at, Some(APP_UID), Some(APP_UID)).unwrap();
        fs::set_permissions(at, fs::Permissions::from_mode(0o755)).unwrap();
        guard
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.at).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Bytes available to unprivileged users on the filesystem of `path`.
fn available(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs writes into the zeroed struct we own.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut stat) }, 0, "statvfs {}", path.display());
    stat.f_bavail * stat.f_frsize
}

/// The app user writes zeros into `file` until the filesystem refuses: nothing is left for
/// unprivileged users, root's reserved blocks are still free.
fn fill_as_app_user(file: &Path) {
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path_str(file).unwrap()))
        .args(["bs=1M", "status=none"])
        .uid(APP_UID)
        .gid(APP_UID)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device"), "dd stopped for another reason\n{}", describe(&out));
}

/// The revision of the journal's last `live` record: what `current` must be on.
fn last_live(sandbox: &Sandbox) -> String {
    let journal = sandbox.journal();
    let live = journal.iter().rev().find(|r| r["state"] == "live").expect("a live record");
    live["revision"].as_str().unwrap().to_owned()
}

#[test]
fn a_full_disk_fails_with_a_message_about_space_and_changes_nothing() {
    let port = free_port();
    // Vendored (the example's default): no index needed, the wheels' sizes in the MANIFEST.
    let (dir, app, bundle_a, bundle_b) = revisions_a_and_b(port).unwrap();
    // C: a post-install command that fills the disk as the app user, as a migration writing
    // a dump or pip unpacking a large wheel would.
    let post = "post_install:\n  - name: fill\n    run: [sh, -c, 'cat /dev/zero > \"$HOME/shared/fill\"']\n    timeout: 60";
    edit_file(&app, "deploy.yaml", "post_install: []", post);
    edit_file(&app, "src/app.py", "hello B", "hello C");
    let bundle_c = build_bundle(&app, &dir.path().join("c"), &[]).unwrap();

    let sandbox = Sandbox::new().unwrap();
    let home = sandbox.root.join("home/snake");
    // Dropped before the sandbox (declared after it): unmounted before its directory goes.
    let _mount = LoopMount::new(&sandbox.root.parent().unwrap().join("home.img"), &home, 128);

    let out = sandbox.after_install(&bundle_a, "d-DISKFUL01").unwrap();
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("available to unprivileged users: "),
        "{}",
        describe(&out)
    );
    let rev_a = assert_current_complete(&sandbox, "after A");
    let journal_before = fs::read(sandbox.state_dir().join("journal.jsonl")).unwrap();

    let ballast = home.join("ballast");
    fill_as_app_user(&ballast);
    let left = available(&home);
    assert!(left < 1 << 20, "the app user could not fill the disk: {left} bytes left");

    // B: refused before anything is written, though root could still write its release into
    // the reserved blocks (B reuses A's venv: only a 2 MiB release is missing).
    let archive_b = sandbox.extract(&bundle_b, "d-DISKFUL02").unwrap();
    let out = sandbox.hook(&archive_b, "AfterInstall", "d-DISKFUL02").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict = stdout.lines().last().unwrap_or_default().to_owned();
    println!("B on a full disk: {verdict}");
    assert_failed(&out, &format!("not enough space on {} for revision ", home.display()));
    assert!(
        verdict.contains("available to unprivileged users; root's reserved blocks are not counted")
            && verdict.contains(&format!("app root {}: release (", sandbox.app_root().display())),
        "{verdict}"
    );
    assert!(!stdout.contains("stage release"), "it staged on a full disk\n{}", describe(&out));
    assert_eq!(assert_current_complete(&sandbox, "after B failed"), rev_a);
    assert_unit_is_current(&sandbox, "after B failed");
    assert_eq!(
        fs::read(sandbox.state_dir().join("journal.jsonl")).unwrap(),
        journal_before,
        "the journal changed"
    );
    assert_eq!(last_live(&sandbox), rev_a);
    assert_eq!(sandbox.listing("releases"), [rev_a.as_str()], "something was staged");
    let copies = fs::read_dir(sandbox.state_dir().join("releases")).unwrap().count();
    assert_eq!(copies, 1, "root copies of B were written");

    // Space again: the same deployment goes through.
    fs::remove_file(&ballast).unwrap();
    let out = sandbox.hook(&archive_b, "AfterInstall", "d-DISKFUL02").output().unwrap();
    assert_ok(&out);
    let rev_b = assert_current_complete(&sandbox, "after B");
    assert_ne!(rev_b, rev_a);
    assert_unit_is_current(&sandbox, "after B");
    assert_eq!(last_live(&sandbox), rev_b);
    assert_nothing_half_built(&sandbox);

    // C: the check passes (nothing is full yet), then the post-install command fills the disk
    // and fails: the verdict says what is left on the app root's and the state's filesystems
    // before the command's own output.
    let out = sandbox.after_install(&bundle_c, "d-DISKFUL03").unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_owned();
    println!("C filling the disk: {verdict}");
    assert_failed(&out, "post-install command \"fill\" exited with status 1; ");
    assert!(
        verdict.contains(&format!(" left on {} (app root), ", home.display()))
            && verdict.contains(" (state); last output (full log: "),
        "{verdict}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("No space left on device"), "{}", describe(&out));
    assert_eq!(assert_current_complete(&sandbox, "after C failed"), rev_b);
    assert_unit_is_current(&sandbox, "after C failed");
    assert_eq!(last_live(&sandbox), rev_b);
    let failed = sandbox.journal().last().unwrap().clone();
    assert_eq!(failed["state"], "failed");
    assert!(failed["message"].as_str().unwrap_or_default().contains(" left on "), "{failed}");
    fs::remove_file(sandbox.app_root().join("shared/fill")).unwrap();
    assert_nothing_half_built(&sandbox);
}
