//! Helpers shared by the loopback tests: deadlines, payloads, proxies as child processes.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use holdwire_smol::proto::wire::crc32c;
use holdwire_smol::{ClientOptions, Listener, ServerConfig, Stream};
use smol::future::FutureExt as _;
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Runs `fut` to completion on this thread, failing the test after `limit`.
pub fn run<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    smol::block_on(fut.or(async move {
        smol::Timer::after(limit).await;
        panic!("test exceeded its {limit:?} budget");
    }))
}

/// `fut`, or an error after `limit`.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, String> {
    async { Ok(fut.await) }
        .or(async move {
            smol::Timer::after(limit).await;
            Err(format!("timed out after {limit:?}"))
        })
        .await
}

/// Whether this is a CI run (`CI=true`): missing servers fail instead of skipping.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Finds `program` on the usual paths. Without it, a local run skips (returns `None` after
/// printing why) and a CI run fails.
pub fn require(program: &str) -> Option<PathBuf> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(program);
        if p.exists() {
            return Some(p);
        }
    }
    let why = format!("{program} is not installed (apt-get install it; .ci/run does)");
    if ci() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// A free loopback port (bound then released; the race with other users is accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Waits until something accepts TCP on `addr`, at most `limit`.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A child process stopped by PID when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
    pub dir: Option<tempfile::TempDir>,
    /// Files in /dev/shm starting with this are removed after the kill (squid's).
    pub shm_prefix: Option<String>,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child (SIGKILL, by its PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The child's log file contents, for failure messages.
    pub fn log(&self, file: &str) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join(file)).ok())
            .unwrap_or_default()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
        if let Some(prefix) = &self.shm_prefix {
            for p in shm_files(prefix) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory");
    // Proxies drop privileges (squid to `proxy`, nginx workers to `nobody`).
    set_mode(dir.path(), 0o777);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

fn spawn_logged(mut cmd: Command, name: &str, dir: tempfile::TempDir) -> ChildGuard {
    let out = std::fs::File::create(dir.path().join("stdout.log")).expect("log file");
    let err = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
    ChildGuard {
        child,
        name: name.into(),
        dir: Some(dir),
        shm_prefix: None,
    }
}

fn ready(mut guard: ChildGuard, addr: SocketAddr, logs: &[&str]) -> (ChildGuard, SocketAddr) {
    if !wait_for_port(addr, Duration::from_secs(15)) {
        let mut text = String::new();
        for l in logs {
            text.push_str(&guard.log(l));
        }
        guard.kill();
        panic!(
            "{} did not listen on {addr} within 15 s:\n{text}",
            guard.name
        );
    }
    (guard, addr)
}

/// tinyproxy on a free loopback port (a forward proxy that closes every connection after one
/// exchange).
pub fn tinyproxy() -> Option<(ChildGuard, SocketAddr)> {
    tinyproxy_with("")
}

/// tinyproxy with `extra` configuration lines (e.g. `BasicAuth user password`).
pub fn tinyproxy_with(extra: &str) -> Option<(ChildGuard, SocketAddr)> {
    let bin = require("tinyproxy")?;
    let dir = temp_dir("hw-tinyproxy-");
    let port = free_port();
    let conf = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 1000\nLogLevel Error\n\
         LogFile \"{d}/tinyproxy.log\"\nPidFile \"{d}/tinyproxy.pid\"\nAllow 127.0.0.1\n\
         User nobody\nGroup nogroup\n{extra}\n",
        d = dir.path().display()
    );
    let conf_path = dir.path().join("tinyproxy.conf");
    std::fs::write(&conf_path, conf).expect("write tinyproxy.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-d").arg("-c").arg(&conf_path);
    let guard = spawn_logged(cmd, "tinyproxy", dir);
    Some(ready(
        guard,
        SocketAddr::from(([127, 0, 0, 1], port)),
        &["stderr.log", "tinyproxy.log"],
    ))
}

/// squid on a free loopback port (a forward proxy keeping connections alive both sides).
pub fn squid() -> Option<(ChildGuard, SocketAddr)> {
    let bin = require("squid")?;
    let dir = temp_dir("hw-squid-");
    let port = free_port();
    let name = format!("hwtest{}x{port}", std::process::id());
    let d = dir.path().display();
    let conf = format!(
        "http_port 127.0.0.1:{port}\n\
         pid_filename {d}/squid.pid\n\
         cache_log {d}/cache.log\n\
         access_log none\n\
         cache_store_log none\n\
         coredump_dir {d}\n\
         pinger_enable off\n\
         cache deny all\n\
         cache_mem 8 MB\n\
         http_access allow all\n\
         shutdown_lifetime 0 seconds\n\
         visible_hostname holdwire-test\n\
         forwarded_for off\n\
         max_filedescriptors 4096\n"
    );
    let conf_path = dir.path().join("squid.conf");
    std::fs::write(&conf_path, conf).expect("write squid.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-N").arg("-n").arg(&name).arg("-f").arg(&conf_path);
    let mut guard = spawn_logged(cmd, "squid", dir);
    // A killed squid leaves its shared memory segments behind.
    guard.shm_prefix = Some(name);
    Some(ready(
        guard,
        SocketAddr::from(([127, 0, 0, 1], port)),
        &["stderr.log", "cache.log"],
    ))
}

fn shm_files(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/dev/shm")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(name))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// nginx as a reverse proxy in front of `upstream`, on a free loopback port.
pub fn nginx(upstream: SocketAddr) -> Option<(ChildGuard, SocketAddr)> {
    let bin = require("nginx")?;
    let dir = temp_dir("hw-nginx-");
    let port = free_port();
    let d = dir.path().display();
    for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let p = dir.path().join(sub);
        std::fs::create_dir(&p).expect("nginx temp dir");
        set_mode(&p, 0o777);
    }
    let conf = format!(
        "worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {d}/body;\n\
           proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n\
           uwsgi_temp_path {d}/uwsgi;\n\
           scgi_temp_path {d}/scgi;\n\
           upstream holdwire {{ server {upstream}; keepalive 64; }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             client_max_body_size 0;\n\
             location / {{\n\
               proxy_pass http://holdwire;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_buffering off;\n\
               proxy_request_buffering off;\n\
               proxy_read_timeout 120s;\n\
               proxy_send_timeout 120s;\n\
             }}\n\
           }}\n\
         }}\n"
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let mut cmd = Command::new(bin);
    cmd.arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-g")
        .arg("daemon off;");
    let guard = spawn_logged(cmd, "nginx", dir);
    Some(ready(
        guard,
        SocketAddr::from(([127, 0, 0, 1], port)),
        &["stderr.log", "error.log"],
    ))
}

/// A listener on an ephemeral loopback port.
pub async fn listener(config: ServerConfig) -> Listener {
    Listener::bind("127.0.0.1:0", config)
        .await
        .expect("bind a listener")
}

/// Client options for the listener at `addr`, optionally through a forward proxy.
pub fn options(server: SocketAddr, proxy: Option<SocketAddr>) -> ClientOptions {
    let o = ClientOptions::new(&format!("http://{server}/")).expect("server URL");
    match proxy {
        Some(p) => o.proxy(&format!("http://{p}")).expect("proxy URL"),
        None => o,
    }
}

/// A deterministic byte stream (xorshift64*), filled in 8-byte steps.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Byte count and CRC-32C of a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub len: u64,
    pub crc: u32,
}

impl Digest {
    fn update(&mut self, data: &[u8]) {
        // CRC-32C of the concatenation, chunk by chunk: crc32c_append semantics via the
        // combined value would need the crate; hashing per chunk and folding keeps it simple.
        self.crc = self.crc.rotate_left(5) ^ crc32c(data);
        self.len += data.len() as u64;
    }
}

/// Writes `len` pattern bytes from `seed` in chunks of `chunk` (a fixed chunking, so both
/// sides fold CRCs over the same boundaries), then half-closes.
pub async fn send_pattern(
    mut w: impl smol::io::AsyncWrite + Unpin,
    seed: u64,
    len: u64,
) -> io::Result<Digest> {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut digest = Digest::default();
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        digest.update(&buf[..n]);
        left -= n as u64;
    }
    w.close().await?;
    Ok(digest)
}

/// Chunk size for pattern digests.
pub const CHUNK: usize = 64 * 1024;

/// Reads to EOF, folding CRCs over `CHUNK`-sized pieces of the stream.
pub async fn receive_digest(mut r: impl smol::io::AsyncRead + Unpin) -> io::Result<Digest> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    let mut digest = Digest::default();
    loop {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            if filled > 0 {
                digest.update(&buf[..filled]);
            }
            return Ok(digest);
        }
        filled += n;
        if filled == CHUNK {
            digest.update(&buf);
            filled = 0;
        }
    }
}

/// What a pattern of `len` bytes from `seed` digests to.
pub fn expected_digest(seed: u64, len: u64) -> Digest {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut digest = Digest::default();
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(CHUNK);
        pattern.fill(&mut buf[..n]);
        digest.update(&buf[..n]);
        left -= n as u64;
    }
    digest
}

/// Sends `len` bytes each way at once over `stream` and checks what arrives; the peer does the
/// same with the seeds swapped. Returns the digest received.
pub async fn exchange(stream: Stream, send_seed: u64, len: u64) -> io::Result<(Digest, Digest)> {
    let (r, w) = stream.split();
    let send = smol::spawn(send_pattern(w, send_seed, len));
    let received = receive_digest(r).await?;
    let sent = send.await?;
    Ok((sent, received))
}

/// Echo: everything read is written back; EOF half-closes.
pub async fn echo(stream: Stream) -> io::Result<u64> {
    let (r, mut w) = stream.split();
    let n = smol::io::copy(r, &mut w).await?;
    w.close().await?;
    Ok(n)
}

/// Reads everything from a std reader (used for child stdout lines).
pub fn read_line(r: &mut impl io::Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte)? {
            0 => break,
            _ if byte[0] == b'\n' => break,
            _ => line.push(byte[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The path of one of this package's example binaries, built by `cargo test`.
pub fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test binary> -> target/<profile>/examples/<name>
    let path = exe.parent()?.parent()?.join("examples").join(name);
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "example binary {} is missing (cargo test builds it; run `cargo build --example {name}`)",
        path.display()
    );
    if ci() {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

/// Drains a child's stdout in the background so it never blocks on a full pipe.
pub fn drain_in_background(mut r: impl io::Read + Send + 'static) {
    std::thread::spawn(move || {
        let mut sink = [0u8; 4096];
        while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
    });
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(max) = limit.maximum {
        limit.current = Some(max);
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
