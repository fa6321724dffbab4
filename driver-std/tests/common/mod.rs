//! Shared helpers for holdwire's loopback tests, written to be copied by other drivers.
//!
//! - [`Daemon`]: a real proxy (tinyproxy, squid, nginx) started from a generated config in its
//!   own temporary directory on an ephemeral loopback port, killed by PID and cleaned up on
//!   drop. [`tinyproxy`], [`squid`] and [`nginx_reverse`] start them; each returns `None`
//!   (with a printed reason) when the program is not installed, and panics instead when
//!   `CI=true`.
//! - [`Pattern`] and [`Verifier`]: a deterministic byte stream (SplitMix64) to send and to
//!   check on arrival without storing it, reporting the first wrong offset.
//! - [`serve_echo`], [`bulk_echo`]: an echo service on a `Listener`, and a checksummed
//!   transfer through it in both directions at once.
//! - [`Child`]: a child process killed and reaped by PID on drop.
//!
//! Everything binds to 127.0.0.1 only, and every wait is bounded.
#![allow(dead_code, unreachable_pub)] // each test file uses a subset

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use holdwire_std::{Listener, Stream};

/// True when running in CI (`CI=true`): missing servers are failures there, not skips.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Serializes the heavy tests of one test binary (2 shared cores: parallel 64 MiB
/// transfers would only measure each other).
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Finds an installed program in `PATH` and the sbin directories. When it is missing,
/// prints why the test is skipped and returns `None`, or panics under `CI=true`.
pub fn require_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    let reason = format!("{name} is not installed (apt-get install {name})");
    if ci() {
        panic!("CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `holdwire-<tag>-<pid>-<n>`, writable by everyone (proxies drop privileges).
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("holdwire-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).expect("chmod temp dir");
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// An ephemeral loopback port that was free a moment ago (for configs that need a number).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Waits until something accepts connections on `addr`, at most `timeout`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A child process, killed (SIGKILL) and reaped by its PID on drop.
pub struct Child {
    child: std::process::Child,
}

impl Child {
    /// Starts `cmd` with stdin closed.
    pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
        Ok(Child {
            child: cmd.stdin(Stdio::null()).spawn()?,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its stdout, if piped.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it now and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A proxy running from a generated config in its own temp dir.
pub struct Daemon {
    /// Program name, for messages.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
    /// Files to remove after it is killed (squid's shared memory segments).
    leftovers: Vec<PathBuf>,
    log_files: Vec<PathBuf>,
}

impl Daemon {
    /// The proxy URL, `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The temp dir holding config, logs and pid file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of its logs, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for f in &self.log_files {
            if let Ok(text) = fs::read_to_string(f) {
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(20);
                out += &format!("--- {} ---\n{}\n", f.display(), lines[start..].join("\n"));
            }
        }
        out
    }

    /// Kills it now (SIGKILL by PID) and removes its leftovers.
    pub fn kill(&mut self) {
        self.child.kill();
        for f in &self.leftovers {
            let _ = fs::remove_file(f);
        }
    }

    /// Starts `program` with `args` after writing `config` (a function of the port and the
    /// dir) to `conf_name`; retries on another port if it does not come up.
    fn start(
        name: &'static str,
        conf_name: &str,
        config: impl Fn(u16, &Path) -> String,
        args: impl Fn(&Path) -> Vec<String>,
        leftovers: impl Fn(&Path) -> Vec<PathBuf>,
        log_files: &[&str],
    ) -> Option<Daemon> {
        let program = require_program(name)?;
        let mut last_log = String::new();
        for _attempt in 0..3 {
            let dir = TempDir::new(name);
            let port = free_port();
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let conf = dir.path().join(conf_name);
            fs::write(&conf, config(port, dir.path())).expect("write config");
            let out = fs::File::create(dir.path().join("stdout.log")).expect("log file");
            let err = out.try_clone().expect("log file");
            let child = Child::spawn(
                Command::new(&program)
                    .args(args(dir.path()))
                    .stdout(out)
                    .stderr(err),
            )
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
            let mut files: Vec<PathBuf> = log_files.iter().map(|f| dir.path().join(f)).collect();
            files.push(dir.path().join("stdout.log"));
            let mut daemon = Daemon {
                name,
                addr,
                child,
                leftovers: leftovers(dir.path()),
                dir,
                log_files: files,
            };
            if wait_for_port(addr, Duration::from_secs(15)) && daemon.child.is_running() {
                return Some(daemon);
            }
            last_log = daemon.log_tail();
            daemon.kill();
        }
        panic!("{name} did not start:\n{last_log}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// tinyproxy (`-d -c CONF`) on a loopback port; `basic_auth` adds `BasicAuth user pass`.
pub fn tinyproxy(basic_auth: Option<(&str, &str)>) -> Option<Daemon> {
    let auth = basic_auth.map_or(String::new(), |(u, p)| format!("BasicAuth {u} {p}\n"));
    Daemon::start(
        "tinyproxy",
        "tinyproxy.conf",
        |port, dir| {
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 1000\nLogLevel Info\n\
                 LogFile \"{d}/tinyproxy.log\"\nPidFile \"{d}/tinyproxy.pid\"\nAllow 127.0.0.1\n{auth}",
                d = dir.display()
            )
        },
        |dir| {
            vec![
                "-d".into(),
                "-c".into(),
                dir.join("tinyproxy.conf").display().to_string(),
            ]
        },
        |_| Vec::new(),
        &["tinyproxy.log"],
    )
}

/// squid (`-N -n NAME -f CONF`) on a loopback port, no cache, no pinger.
pub fn squid() -> Option<Daemon> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "hwtest{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let shm = name.clone();
    Daemon::start(
        "squid",
        "squid.conf",
        |port, dir| {
            format!(
                "http_port 127.0.0.1:{port}\nhttp_access allow all\n\
                 pid_filename {d}/squid.pid\ncache_log {d}/cache.log\n\
                 access_log stdio:{d}/access.log\ncoredump_dir {d}\npinger_enable off\n\
                 cache deny all\ncache_mem 8 MB\nshutdown_lifetime 0 seconds\n\
                 netdb_filename none\nclient_persistent_connections on\n\
                 server_persistent_connections on\n",
                d = dir.display()
            )
        },
        move |dir| {
            vec![
                "-N".into(),
                "-n".into(),
                name.clone(),
                "-f".into(),
                dir.join("squid.conf").display().to_string(),
            ]
        },
        move |_| {
            ["cf__metadata", "cf__queues", "cf__readers"]
                .iter()
                .map(|s| PathBuf::from(format!("/dev/shm/{shm}-{s}.shm")))
                .collect()
        },
        &["cache.log"],
    )
}

/// nginx as a reverse proxy in front of `upstream` (single process, no buffering,
/// keep-alive upstream connections, `proxy_read_timeout` well above the default `max_wait`).
pub fn nginx_reverse(upstream: SocketAddr) -> Option<Daemon> {
    Daemon::start(
        "nginx",
        "nginx.conf",
        |port, dir| {
            format!(
                "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\nevents {{ worker_connections 4096; }}\n\
                 http {{\n  access_log {d}/access.log;\n\
                 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n\
                 upstream holdwire {{ server {upstream}; keepalive 64; }}\n\
                 server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
                 location / {{\n      proxy_pass http://holdwire;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
                 proxy_request_buffering off;\n      proxy_read_timeout 120s;\n\
                 proxy_send_timeout 120s;\n    }}\n  }}\n}}\n",
                d = dir.display()
            )
        },
        |dir| {
            vec![
                "-c".into(),
                dir.join("nginx.conf").display().to_string(),
                "-p".into(),
                dir.display().to_string(),
                "-e".into(),
                dir.join("error.log").display().to_string(),
            ]
        },
        |_| Vec::new(),
        &["error.log"],
    )
}

// ---- payloads ----

/// A deterministic byte stream: SplitMix64 output, 8 bytes per step.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    /// The stream for `seed`.
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.used == 8 {
                if buf.len() - i >= 8 {
                    buf[i..i + 8].copy_from_slice(&self.next_word());
                    i += 8;
                    continue;
                }
                self.word = self.next_word();
                self.used = 0;
            }
            buf[i] = self.word[self.used];
            self.used += 1;
            i += 1;
        }
    }

    /// The next `len` bytes.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.fill(&mut v);
        v
    }
}

/// Checks received bytes against a [`Pattern`], with a running FNV-1a checksum.
#[derive(Clone, Debug)]
pub struct Verifier {
    pattern: Pattern,
    scratch: Vec<u8>,
    /// Bytes checked so far.
    pub offset: u64,
    /// FNV-1a 64 of everything checked.
    pub checksum: u64,
}

impl Verifier {
    /// Expects the stream of `seed`.
    pub fn new(seed: u64) -> Verifier {
        Verifier {
            pattern: Pattern::new(seed),
            scratch: Vec::new(),
            offset: 0,
            checksum: 0xcbf2_9ce4_8422_2325,
        }
    }

    /// Checks the next bytes; the error names the first wrong offset.
    pub fn check(&mut self, data: &[u8]) -> Result<(), String> {
        self.scratch.resize(data.len(), 0);
        self.pattern.fill(&mut self.scratch);
        if let Some(i) = data.iter().zip(&self.scratch).position(|(a, b)| a != b) {
            return Err(format!(
                "byte {} differs: got {:#04x}, expected {:#04x}",
                self.offset + i as u64,
                data[i],
                self.scratch[i]
            ));
        }
        for &b in data {
            self.checksum = (self.checksum ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.offset += data.len() as u64;
        Ok(())
    }
}

/// FNV-1a 64 of the first `len` bytes of the stream of `seed` (to compare checksums).
pub fn pattern_checksum(seed: u64, len: u64) -> u64 {
    let mut v = Verifier::new(seed);
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        v.check(&buf[..n]).expect("same stream");
        left -= n as u64;
    }
    v.checksum
}

// ---- services and transfers ----

/// Echoes one stream until EOF, then finishes it. Returns the bytes echoed.
pub fn echo(stream: Stream) -> io::Result<u64> {
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let n = io::copy(&mut reader, &mut writer)?;
    writer.shutdown(Shutdown::Write)?;
    Ok(n)
}

/// Accepts streams on `listener` forever, echoing each in its own thread.
pub fn serve_echo(listener: Listener) -> JoinHandle<()> {
    thread::Builder::new()
        .name("echo-accept".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let _ = thread::Builder::new().name("echo".into()).spawn(move || {
                    if let Err(e) = echo(stream) {
                        if std::env::var_os("HOLDWIRE_LOG").is_some() {
                            eprintln!("echo: {e}");
                        }
                    }
                });
            }
        })
        .expect("spawn echo acceptor")
}

/// Result of [`bulk_echo`].
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Bytes each way.
    pub bytes: u64,
    /// Wall time from the first write to EOF.
    pub elapsed: Duration,
    /// FNV-1a 64 of the bytes that came back.
    pub checksum: u64,
}

impl Transfer {
    /// Throughput of one direction in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }
}

/// Sends `len` bytes of the stream of `seed` through an echo service while reading them
/// back at the same time, checks every byte and the clean EOF after them, and closes.
pub fn bulk_echo(stream: Stream, len: u64, seed: u64) -> Result<Transfer, String> {
    let start = Instant::now();
    let writer_stream = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = thread::spawn(move || -> io::Result<()> {
        let mut s = writer_stream;
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; 256 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        s.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    let mut verifier = Verifier::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("read at {}: {e} ({:?})", verifier.offset, e.kind()))?;
        if n == 0 {
            break;
        }
        verifier.check(&buf[..n])?;
        if verifier.offset > len {
            return Err(format!("more than {len} bytes came back"));
        }
    }
    let elapsed = start.elapsed();
    writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("write: {e} ({:?})", e.kind()))?;
    if verifier.offset != len {
        return Err(format!("EOF after {} of {len} bytes", verifier.offset));
    }
    Ok(Transfer {
        bytes: len,
        elapsed,
        checksum: verifier.checksum,
    })
}

/// A short interactive exchange: `rounds` messages, each echoed before the next is sent.
pub fn ping_pong(stream: &Stream, rounds: usize) -> Result<Duration, String> {
    let start = Instant::now();
    let mut s = stream;
    for i in 0..rounds {
        let msg = format!("ping {i:04}\n");
        s.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)
            .map_err(|e| format!("round {i}: {e}"))?;
        if back != msg.as_bytes() {
            return Err(format!(
                "round {i}: got {:?}",
                String::from_utf8_lossy(&back)
            ));
        }
    }
    Ok(start.elapsed() / rounds as u32)
}

/// Reads the child's stdout until a line containing `prefix` (bounded by `timeout`);
/// returns the rest of that line after it. (A test binary run as a child prints
/// `test name ... ` before the test's own output, on the same line.)
pub fn wait_for_line(child: &mut Child, prefix: &str, timeout: Duration) -> Option<String> {
    let out = child.take_stdout()?;
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_string();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if let Some(at) = line.find(&prefix) {
                let _ = tx.send(line[at + prefix.len()..].to_string());
            }
        }
    });
    rx.recv_timeout(timeout).ok()
}

/// CPU time (user + system) this process has used so far, from /proc/self/stat.
pub fn process_cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based); `rest` starts at field 3.
    let total = ticks(11) + ticks(12);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(total * 10)
}
