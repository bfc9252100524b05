//! Socket activation without systemd, for the `process` service manager: a small holder process
//! binds the socket unit's `ListenStream=` addresses once and keeps them open across service
//! restarts; each new service process gets them as systemd passes them (fd 3 onward,
//! `LISTEN_FDS`, `LISTEN_PID`), so connections wait in the backlog while the service restarts.
//!
//! The holder is this binary run as `deploy-hook listen-holder SOCKET_FILE CONTROL`, in a session
//! of its own. It answers each connection on the unix socket CONTROL (mode 0600, peers of
//! another uid refused) with its listening descriptors (SCM_RIGHTS). Its pidfile records the
//! hash of the socket file it bound, so a changed socket file is noticed and re-bound.

use std::{
    ffi::{CString, OsString},
    fs,
    io::{BufRead, BufReader, Write},
    mem,
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            ffi::OsStrExt,
            fs::PermissionsExt,
            net::{UnixListener, UnixStream},
            process::CommandExt,
        },
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use packaging::procfs::{PidStart, ProcStat};

use crate::{users, util::Log};

/// The most descriptors one socket unit may pass.
const MAX_FDS: usize = 16;

/// The `[Socket]` keys the holder uses.
#[derive(Debug, Default, PartialEq)]
pub struct SocketSpec {
    /// `ListenStream=` values in order: `IP:PORT` or an absolute unix socket path.
    pub listen: Vec<String>,
    /// `SocketUser=`, `SocketGroup=`, `SocketMode=` for unix sockets.
    pub user: Option<String>,
    /// See `user`.
    pub group: Option<String>,
    /// See `user`; 0666 when absent, as systemd.
    pub mode: u32,
    /// `Backlog=`; SOMAXCONN when absent, as systemd.
    pub backlog: i32,
}

impl SocketSpec {
    /// Reads the `[Socket]` keys of a socket unit, through `packaging::unit_file`.
    pub fn parse(text: &str) -> SocketSpec {
        let mut spec = SocketSpec { mode: 0o666, backlog: libc::SOMAXCONN, ..SocketSpec::default() };
        for entry in packaging::unit_file::section(text, "Socket") {
            let value = entry.value.replace("%%", "%");
            match entry.key.as_str() {
                "ListenStream" => spec.listen.push(value),
                "SocketUser" => spec.user = Some(value),
                "SocketGroup" => spec.group = Some(value),
                "SocketMode" => spec.mode = u32::from_str_radix(&value, 8).unwrap_or(0o666),
                "Backlog" => spec.backlog = value.parse().unwrap_or(libc::SOMAXCONN),
                _ => {}
            }
        }
        spec
    }
}

/// Binds every address of `spec` (unix socket paths under `root`), in order.
fn bind_all(spec: &SocketSpec, root: &Path) -> anyhow::Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    for listen in &spec.listen {
        let fd: OwnedFd = if listen.starts_with('/') {
            let path = root.join(listen.trim_start_matches('/'));
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
                    fs::remove_file(&path)?
                }
                Ok(_) => bail!("{} exists and is not a socket; not replacing it", path.display()),
                Err(_) => {}
            }
            let listener =
                UnixListener::bind(&path).with_context(|| format!("cannot listen on {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(spec.mode))?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } == 0
                && let Some(user) = &spec.user
            {
                let ids = users::resolve(root, user, spec.group.as_deref().unwrap_or(user))?;
                std::os::unix::fs::lchown(&path, Some(ids.uid), Some(ids.gid))?;
            }
            listener.into()
        } else {
            let addr: SocketAddr =
                listen.parse().with_context(|| format!("ListenStream={listen} is not IP:PORT"))?;
            TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?.into()
        };
        // SAFETY: listen(2) on a socket we own; a larger backlog than std's default holds more
        // connections while the service restarts.
        unsafe { libc::listen(fd.as_raw_fd(), spec.backlog) };
        fds.push(fd);
    }
    Ok(fds)
}

/// `sha256`-free fingerprint of a socket file: its bytes, hashed by std's SipHash with fixed keys.
fn fingerprint(text: &str) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    format!("{:016x}", BuildHasherDefault::<DefaultHasher>::default().hash_one(text))
}

/// The holder of one app root.
pub struct Holder {
    /// Its pidfile: `pid start fingerprint` ([`PidStart`] and the socket file's fingerprint).
    pub pidfile: PathBuf,
    /// The control socket.
    pub control: PathBuf,
    /// The sandbox root unix socket paths live under.
    pub root: PathBuf,
}

impl Holder {
    /// The holder whose files sit in `dir` (next to the service's pidfile).
    pub fn new(dir: &Path, root: &Path) -> Holder {
        Holder { pidfile: dir.join("listen.pid"), control: dir.join("listen.sock"), root: root.to_owned() }
    }

    /// The running holder's pid and the fingerprint of the socket file it bound.
    fn running(&self) -> Option<(i32, String)> {
        let text = fs::read_to_string(&self.pidfile).ok()?;
        let (holder, rest) = PidStart::parse(&text)?;
        let print = rest.split_whitespace().next()?.to_owned();
        holder.alive().then_some((holder.pid, print))
    }

    /// For `status`: whether a holder runs, and whether it holds `socket_file` as it is now.
    pub fn state(&self, socket_file: &Path) -> String {
        match self.running() {
            None => "not held (no socket holder runs)".into(),
            Some((pid, _)) if self.is_current(socket_file) => format!("held by process {pid}"),
            Some((pid, _)) => {
                format!("held by process {pid}, with older binds (re-bound at the next restart)")
            }
        }
    }

    /// True when a holder runs with the sockets of `socket_file` as it is now.
    pub fn is_current(&self, socket_file: &Path) -> bool {
        let Ok(text) = fs::read_to_string(socket_file) else { return false };
        self.running().is_some_and(|(_, print)| print == fingerprint(&text))
    }

    /// Stops the holder (its sockets close) and removes its files and unix sockets.
    pub fn stop(&self, socket_file: &Path, log: &Log) {
        if let Some((pid, _)) = self.running() {
            // SAFETY: a signal to the holder we started, checked by its start time.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.running().is_some() && Instant::now() < deadline {
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.running().is_some() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            log.info(format!("stopped the socket holder (process {pid})"));
        }
        let _ = fs::remove_file(&self.pidfile);
        let _ = fs::remove_file(&self.control);
        if let Ok(text) = fs::read_to_string(socket_file) {
            for listen in SocketSpec::parse(&text).listen.iter().filter(|l| l.starts_with('/')) {
                let _ = fs::remove_file(self.root.join(listen.trim_start_matches('/')));
            }
        }
    }

    /// Starts a holder for `socket_file`: returns once it listens, or with its error.
    pub fn start(&self, socket_file: &Path, log: &Log) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find this binary to start the socket holder")?;
        let _ = fs::remove_file(&self.control);
        let mut child = Command::new(exe)
            .arg("--root")
            .arg(&self.root)
            .arg("listen-holder")
            .arg(socket_file)
            .arg(&self.control)
            .arg(&self.pidfile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start the socket holder")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
        match line.trim_end().strip_prefix("listening ") {
            Some(what) => {
                log.info(format!("socket holder (process {}) listens on {what}", child.id()));
                Ok(())
            }
            None => {
                let _ = child.wait();
                bail!("the socket holder failed: {}", line.trim_end())
            }
        }
    }

    /// The listening descriptors, fetched from the running holder.
    pub fn fds(&self) -> anyhow::Result<Vec<OwnedFd>> {
        let stream = UnixStream::connect(&self.control)
            .with_context(|| format!("cannot reach the socket holder at {}", self.control.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let fds = recv_fds(&stream).context("the socket holder sent no descriptors")?;
        if fds.is_empty() {
            bail!("the socket holder sent no descriptors");
        }
        Ok(fds)
    }
}

/// The holder's main: binds, reports `listening ...` on stdout (or the error), writes its
/// pidfile, then serves its descriptors on `control` until it is killed.
pub fn holder_main(root: &Path, socket_file: &Path, control: &Path, pidfile: &Path) -> anyhow::Result<()> {
    let res = (|| -> anyhow::Result<(Vec<OwnedFd>, UnixListener, String)> {
        let text = fs::read_to_string(socket_file)
            .with_context(|| format!("cannot read {}", socket_file.display()))?;
        let spec = SocketSpec::parse(&text);
        if spec.listen.is_empty() || spec.listen.len() > MAX_FDS {
            bail!(
                "{}: {} ListenStream= lines, expected 1 to {MAX_FDS}",
                socket_file.display(),
                spec.listen.len()
            );
        }
        let fds = bind_all(&spec, root)?;
        let control =
            UnixListener::bind(control).with_context(|| format!("cannot listen on {}", control.display()))?;
        Ok((fds, control, text))
    })();
    let mut stdout = std::io::stdout();
    let (fds, listener, text) = match res {
        Ok(it) => it,
        Err(err) => {
            let _ = writeln!(stdout, "error: {err:#}");
            return Err(err);
        }
    };
    fs::set_permissions(control, fs::Permissions::from_mode(0o600))?;
    let pid = std::process::id() as i32;
    let start = ProcStat::of(pid).context("cannot read this process's start time")?.start;
    fs::write(pidfile, format!("{pid} {start} {}\n", fingerprint(&text)))?;
    let spec = SocketSpec::parse(&text);
    writeln!(stdout, "listening {}", spec.listen.join(" "))?;
    stdout.flush()?;
    // Nothing of the hook's stays open: the agent waits for every holder of its pipes.
    let null = fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    for fd in 0..3 {
        // SAFETY: replacing our own standard descriptors.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    let me = unsafe { libc::getuid() };
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if peer_uid(&stream) != Some(me) {
            continue;
        }
        let _ = send_fds(&stream, &raw);
    }
    Ok(())
}

fn peer_uid(stream: &UnixStream) -> Option<u32> {
    let mut cred: libc::ucred = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

fn cmsg_space(fds: usize) -> usize {
    // SAFETY: a pure size computation.
    unsafe { libc::CMSG_SPACE((fds * mem::size_of::<RawFd>()) as u32) as usize }
}

fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    let mut byte = [b'F'];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut buf = vec![0u8; cmsg_space(fds.len())];
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.as_mut_ptr().cast();
    msg.msg_controllen = buf.len() as _;
    // SAFETY: the control buffer has room for one header and `fds`, per CMSG_SPACE.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        if libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fds(stream: &UnixStream) -> std::io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut buf = vec![0u8; cmsg_space(MAX_FDS)];
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.as_mut_ptr().cast();
    msg.msg_controllen = buf.len() as _;
    let mut out = Vec::new();
    // SAFETY: recvmsg fills our buffers; every descriptor it hands us is owned from here on.
    unsafe {
        if libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let n = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / mem::size_of::<RawFd>();
                for i in 0..n {
                    out.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    for fd in &out {
        let mut kind: libc::c_int = 0;
        let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt on a descriptor we own.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut i32).cast(),
                &mut len,
            )
        };
        if rc != 0 || kind != libc::SOCK_STREAM {
            return Err(std::io::Error::other("a descriptor from the socket holder is not a stream socket"));
        }
    }
    Ok(out)
}

/// Makes `cmd` start its program with `fds` as descriptors 3, 4, ... and `LISTEN_FDS`,
/// `LISTEN_PID` (the child's own pid) set, as systemd does. `program` must be absolute: the
/// child `execve`s it itself, after every other setting of `cmd` (user, directory, session).
pub fn pass_fds(
    cmd: &mut Command,
    program: &Path,
    args: &[String],
    env: &[(OsString, OsString)],
    fds: &[OwnedFd],
) -> anyhow::Result<()> {
    if !program.is_absolute() {
        bail!("{} must be an absolute path to receive listening sockets", program.display());
    }
    let n = fds.len();
    // Copies above 3 + n, so moving them down to 3.. never overwrites one another.
    let mut high = Vec::new();
    for fd in fds {
        // SAFETY: fcntl duplicates a descriptor we own; the copy is owned by `high`.
        let copy = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, (3 + n) as libc::c_int) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error()).context("cannot duplicate a listening socket");
        }
        high.push(unsafe { OwnedFd::from_raw_fd(copy) });
    }
    let cstr = |b: &[u8]| CString::new(b).context("a NUL byte in the command line or environment");
    let path = cstr(program.as_os_str().as_bytes())?;
    let mut strings = vec![path.clone()];
    for arg in args {
        strings.push(cstr(arg.as_bytes())?);
    }
    let argc = strings.len();
    for (k, v) in env {
        if k != "LISTEN_FDS" && k != "LISTEN_PID" {
            strings.push(cstr(&[k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
    }
    strings.push(cstr(format!("LISTEN_FDS={n}").as_bytes())?);
    // Filled in by the child with its own pid, in place: no allocation after fork.
    let mut pid_var: Vec<u8> = b"LISTEN_PID=".iter().copied().chain([0u8; 12]).collect();
    let pid_at = pid_var.as_mut_ptr() as usize + b"LISTEN_PID=".len();
    let mut argv: Vec<usize> = strings[..argc].iter().map(|s| s.as_ptr() as usize).collect();
    argv.push(0);
    let mut envp: Vec<usize> = strings[argc..].iter().map(|s| s.as_ptr() as usize).collect();
    envp.push(pid_var.as_ptr() as usize);
    envp.push(0);
    let raw_high: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
    let path_ptr = path.as_ptr() as usize;
    let keep = (strings, pid_var, high, path);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // calls (getpid, dup2, execve) and writes into memory allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let _ = &keep;
            let mut pid = libc::getpid() as u32;
            let mut digits = [0u8; 10];
            let mut len = 0;
            loop {
                digits[len] = b'0' + (pid % 10) as u8;
                len += 1;
                pid /= 10;
                if pid == 0 {
                    break;
                }
            }
            let out = pid_at as *mut u8;
            for i in 0..len {
                *out.add(i) = digits[len - 1 - i];
            }
            *out.add(len) = 0;
            for (i, fd) in raw_high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::execve(
                path_ptr as *const libc::c_char,
                argv.as_ptr() as *const *const libc::c_char,
                envp.as_ptr() as *const *const libc::c_char,
            );
            Err(std::io::Error::last_os_error())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rendered_socket_unit() {
        let spec = SocketSpec::parse(
            "[Socket]\nListenStream=0.0.0.0:9000\nListenStream=/run/shop.sock\nAccept=no\nSocketUser=shop\nSocketGroup=shop\nSocketMode=0660\nBacklog=64\n",
        );
        assert_eq!(spec.listen, ["0.0.0.0:9000", "/run/shop.sock"]);
        assert_eq!(
            (spec.user.as_deref(), spec.group.as_deref(), spec.mode, spec.backlog),
            (Some("shop"), Some("shop"), 0o660, 64)
        );
    }

    #[test]
    fn descriptors_cross_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send_fds(&a, &[listener.as_raw_fd()]).unwrap();
        let got = recv_fds(&b).unwrap();
        assert_eq!(got.len(), 1);
        let copy = TcpListener::from(got.into_iter().next().unwrap());
        assert_eq!(copy.local_addr().unwrap(), addr);
    }
}
