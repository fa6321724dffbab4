//! The rows: how each tunnel is started between the load generator and the far end, as child
//! processes stopped by PID, and the CPU time and peak memory those processes use.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use holdwire_smol::relay::Relay;

/// One row of the table: a way to carry the test's TCP connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Row {
    /// Plain TCP straight to the far end.
    Raw,
    /// holdwire-std endpoints (this binary's hidden `__std-server`/`__std-client` modes).
    Std,
    /// The `holdwire` CLI (holdwire-smol) server and client, direct.
    Smol,
    /// The `holdwire` CLI through tinyproxy.
    SmolTinyproxy,
    /// The `holdwire` CLI through squid.
    SmolSquid,
    /// GNU httptunnel with its defaults.
    Ht,
    /// GNU httptunnel with `-c 16M`.
    Ht16m,
    /// GNU httptunnel with its defaults, through tinyproxy.
    HtTinyproxy,
    /// GNU httptunnel with `-c 16M`, through tinyproxy.
    Ht16mTinyproxy,
}

impl Row {
    /// Every row, in table order.
    pub const ALL: [Row; 9] = [
        Row::Raw,
        Row::Std,
        Row::Smol,
        Row::SmolTinyproxy,
        Row::SmolSquid,
        Row::Ht,
        Row::Ht16m,
        Row::HtTinyproxy,
        Row::Ht16mTinyproxy,
    ];

    /// The name used by `--rows` and in the results.
    pub fn key(self) -> &'static str {
        match self {
            Row::Raw => "raw",
            Row::Std => "std",
            Row::Smol => "smol",
            Row::SmolTinyproxy => "smol-tinyproxy",
            Row::SmolSquid => "smol-squid",
            Row::Ht => "ht",
            Row::Ht16m => "ht-16m",
            Row::HtTinyproxy => "ht-tinyproxy",
            Row::Ht16mTinyproxy => "ht-16m-tinyproxy",
        }
    }

    /// A description for the table.
    pub fn label(self) -> &'static str {
        match self {
            Row::Raw => "raw TCP",
            Row::Std => "holdwire std, direct",
            Row::Smol => "holdwire CLI (smol), direct",
            Row::SmolTinyproxy => "holdwire CLI (smol), tinyproxy",
            Row::SmolSquid => "holdwire CLI (smol), squid",
            Row::Ht => "httptunnel, defaults",
            Row::Ht16m => "httptunnel -c 16M",
            Row::HtTinyproxy => "httptunnel, tinyproxy",
            Row::Ht16mTinyproxy => "httptunnel -c 16M, tinyproxy",
        }
    }

    /// Whether this row is holdwire (whose failures fail the run).
    pub fn is_holdwire(self) -> bool {
        matches!(
            self,
            Row::Std | Row::Smol | Row::SmolTinyproxy | Row::SmolSquid
        )
    }

    /// Whether this row is httptunnel.
    pub fn is_httptunnel(self) -> bool {
        matches!(
            self,
            Row::Ht | Row::Ht16m | Row::HtTinyproxy | Row::Ht16mTinyproxy
        )
    }

    fn proxy(self) -> Option<Proxy> {
        match self {
            Row::SmolTinyproxy | Row::HtTinyproxy | Row::Ht16mTinyproxy => Some(Proxy::Tinyproxy),
            Row::SmolSquid => Some(Proxy::Squid),
            _ => None,
        }
    }
}

/// A forward proxy some rows go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    /// tinyproxy: closes every connection after one exchange.
    Tinyproxy,
    /// squid: keeps connections alive.
    Squid,
}

/// PIDs of the children alive now, and the temporary directory: what the signal handler
/// cleans up.
static LIVE: Mutex<(Vec<u32>, Option<PathBuf>)> = Mutex::new((Vec::new(), None));

/// On SIGINT or SIGTERM: kills every child started (by PID), removes the temporary files and
/// exits with 130.
pub fn stop_children_on_signals() {
    use async_signal::{Signal, Signals};
    use smol::stream::StreamExt as _;
    let Ok(mut signals) = Signals::new([Signal::Int, Signal::Term]) else {
        return;
    };
    thread::spawn(move || {
        if smol::block_on(signals.next()).is_some() {
            let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
            for &pid in &live.0 {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            if let Some(dir) = &live.1 {
                let _ = std::fs::remove_dir_all(dir);
            }
            remove_squid_shm();
            eprintln!("e2e: interrupted; stopped {} child processes", live.0.len());
            std::process::exit(130);
        }
    });
}

/// A child process stopped (SIGKILL, by its PID) and reaped when dropped.
pub struct ChildGuard {
    child: Child,
    name: String,
    log: PathBuf,
}

impl ChildGuard {
    fn spawn(mut cmd: Command, name: &str, dir: &Path) -> Result<ChildGuard, String> {
        let log = dir.join(format!("{name}-{}.log", next_id()));
        let out = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let err = out.try_clone().map_err(|e| format!("log file: {e}"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        live.0.push(child.id());
        drop(live);
        Ok(ChildGuard {
            child,
            name: name.into(),
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// Waits until this process listens on `port`: seen in /proc/net/tcp and among the
    /// process's own file descriptors (so another program that took the port does not count),
    /// without connecting (httptunnel's client serves a single connection).
    fn wait_listening(&mut self, port: u16, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if listening(port)
                .into_iter()
                .any(|inode| owns_socket(self.pid(), inode))
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}) before listening: {}",
                    self.name,
                    self.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not listen on port {port} within {limit:?}: {}",
            self.name,
            self.log_tail()
        ))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.child.kill();
        live.0.retain(|&pid| pid != self.child.id());
        drop(live);
        let _ = self.child.wait();
    }
}

fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Inodes of the sockets listening on TCP `port` (IPv4 loopback or any address).
fn listening(port: u16) -> Vec<u64> {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listens = fields.len() > 9 && fields[3] == "0A";
            (listens && wanted.iter().any(|w| w == fields[1]))
                .then(|| fields[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// Whether process `pid` has socket `inode` open.
fn owns_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()))
    })
}

/// A free loopback port (bound then released; the race with other users is accepted).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Finds `program` on the usual paths.
pub fn find(program: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(program))
    .find(|p| p.exists())
}

/// What the rows need from the machine, found once.
pub struct Env {
    /// This binary (for the std rows' hidden modes).
    pub exe: PathBuf,
    /// The `holdwire` CLI, or why it is missing.
    pub holdwire: Result<PathBuf, String>,
    /// `hts` and `htc`, or why they are missing.
    pub httptunnel: Result<(PathBuf, PathBuf), String>,
    /// tinyproxy's address, or why it is missing.
    pub tinyproxy: Result<SocketAddr, String>,
    /// squid's address, or why it is missing.
    pub squid: Result<SocketAddr, String>,
    /// Logs and proxy configs.
    pub dir: tempfile::TempDir,
    /// The proxies, stopped when this is dropped.
    _proxies: Vec<ChildGuard>,
}

impl Env {
    /// Finds the tools and starts the proxies `rows` need.
    pub fn new(rows: &[Row]) -> Result<Env, String> {
        let dir = tempfile::Builder::new()
            .prefix("holdwire-e2e-")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        // Proxies drop privileges (squid to `proxy`, tinyproxy to `nobody`).
        set_mode(dir.path(), 0o777);
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(dir.path().to_path_buf());
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let holdwire = if rows.iter().any(|r| r.is_holdwire() && *r != Row::Std) {
            holdwire_cli(&exe)
        } else {
            Err("not needed by the selected rows".into())
        };
        let httptunnel = match (find("hts"), find("htc")) {
            (Some(s), Some(c)) => Ok((s, c)),
            _ => Err("hts/htc not installed (apt-get install httptunnel)".into()),
        };
        let mut proxies = Vec::new();
        let wants = |p: Proxy| rows.iter().any(|r| r.proxy() == Some(p));
        let mut start = |p: Proxy| -> Result<SocketAddr, String> {
            let (guard, addr) = match p {
                Proxy::Tinyproxy => tinyproxy(dir.path())?,
                Proxy::Squid => squid(dir.path())?,
            };
            proxies.push(guard);
            Ok(addr)
        };
        let unused = || Err("not needed by the selected rows".to_string());
        let tinyproxy = if wants(Proxy::Tinyproxy) {
            start(Proxy::Tinyproxy)
        } else {
            unused()
        };
        let squid = if wants(Proxy::Squid) {
            start(Proxy::Squid)
        } else {
            unused()
        };
        Ok(Env {
            exe,
            holdwire,
            httptunnel,
            tinyproxy,
            squid,
            dir,
            _proxies: proxies,
        })
    }

    /// Why `row` cannot run here, if it cannot.
    pub fn missing(&self, row: Row) -> Option<String> {
        let mut why = Vec::new();
        if matches!(row, Row::Smol | Row::SmolTinyproxy | Row::SmolSquid) {
            if let Err(e) = &self.holdwire {
                why.push(e.clone());
            }
        }
        if row.is_httptunnel() {
            if let Err(e) = &self.httptunnel {
                why.push(e.clone());
            }
        }
        match row.proxy() {
            Some(Proxy::Tinyproxy) => why.extend(self.tinyproxy.clone().err()),
            Some(Proxy::Squid) => why.extend(self.squid.clone().err()),
            None => {}
        }
        (!why.is_empty()).then(|| why.join("; "))
    }

    fn proxy_addr(&self, row: Row) -> Result<Option<SocketAddr>, String> {
        match row.proxy() {
            Some(Proxy::Tinyproxy) => self.tinyproxy.clone().map(Some),
            Some(Proxy::Squid) => self.squid.clone().map(Some),
            None => Ok(None),
        }
    }
}

/// The `holdwire` CLI next to this binary, rebuilt first when cargo is at hand (so the row
/// measures the current sources).
fn holdwire_cli(exe: &Path) -> Result<PathBuf, String> {
    let path = exe.with_file_name("holdwire");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let release = exe
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(["build", "-q", "-p", "holdwire-smol", "--bin", "holdwire"])
        .arg("--manifest-path")
        .arg(&manifest);
    if release {
        cmd.arg("--release");
    }
    // The build goes where this binary was built.
    if let Some(target) = exe.parent().and_then(|p| p.parent()) {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let built = manifest.exists() && cmd.status().is_ok_and(|s| s.success());
    if path.exists() {
        if !built {
            eprintln!(
                "e2e: could not rebuild {}; measuring the existing binary",
                path.display()
            );
        }
        Ok(path)
    } else {
        Err(format!(
            "the holdwire CLI is not at {} (cargo build --release -p holdwire-smol)",
            path.display()
        ))
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

fn tinyproxy(dir: &Path) -> Result<(ChildGuard, SocketAddr), String> {
    let bin = find("tinyproxy").ok_or("tinyproxy not installed (apt-get install tinyproxy)")?;
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        "Port {port}\nListen 127.0.0.1\nTimeout 600\nMaxClients 1000\nLogLevel Error\n\
         LogFile \"{d}/tinyproxy.log\"\nPidFile \"{d}/tinyproxy.pid\"\nAllow 127.0.0.1\n\
         User nobody\nGroup nogroup\n"
    );
    let conf_path = dir.join("tinyproxy.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("tinyproxy.conf: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-d").arg("-c").arg(&conf_path);
    let mut guard = ChildGuard::spawn(cmd, "tinyproxy", dir)?;
    guard.wait_listening(port, Duration::from_secs(15))?;
    Ok((guard, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn squid(dir: &Path) -> Result<(ChildGuard, SocketAddr), String> {
    let bin = find("squid").ok_or("squid not installed (apt-get install squid)")?;
    let port = free_port()?;
    let name = format!("hwe2e{}x{port}", std::process::id());
    let d = dir.display();
    let conf = format!(
        "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache_log {d}/cache.log\n\
         access_log none\ncache_store_log none\ncoredump_dir {d}\npinger_enable off\n\
         cache deny all\ncache_mem 8 MB\nhttp_access allow all\nshutdown_lifetime 0 seconds\n\
         visible_hostname holdwire-e2e\nforwarded_for off\nmax_filedescriptors 4096\n"
    );
    let conf_path = dir.join("squid.conf");
    std::fs::write(&conf_path, conf).map_err(|e| format!("squid.conf: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-N").arg("-n").arg(&name).arg("-f").arg(&conf_path);
    let mut guard = ChildGuard::spawn(cmd, "squid", dir)?;
    guard.name = format!("squid (shm {name})");
    guard.wait_listening(port, Duration::from_secs(15))?;
    Ok((guard, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// Removes the shared memory segments a killed squid leaves behind.
pub fn remove_squid_shm() {
    let prefix = format!("hwe2e{}x", std::process::id());
    if let Ok(entries) = std::fs::read_dir("/dev/shm") {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A started tunnel: the load generator connects to `entry`.
pub struct Tunnel {
    /// Where the load generator connects.
    pub entry: SocketAddr,
    /// The tunnel's processes (client and server endpoints).
    pub children: Vec<ChildGuard>,
    /// The lossy relay between the endpoints, if any.
    pub relay: Option<Relay>,
}

impl Tunnel {
    /// Starts `row` towards `target`, with a relay dropping `loss` (0 to 1) of the HTTP
    /// messages between the endpoints when given.
    pub fn start(
        env: &Env,
        row: Row,
        target: SocketAddr,
        loss: Option<f64>,
    ) -> Result<Tunnel, String> {
        let dir = env.dir.path();
        let wait = Duration::from_secs(15);
        if row == Row::Raw {
            return Ok(Tunnel {
                entry: target,
                children: Vec::new(),
                relay: None,
            });
        }
        let proxy = env.proxy_addr(row)?;
        let server_port = free_port()?;
        let server_addr = SocketAddr::from(([127, 0, 0, 1], server_port));
        let mut children = Vec::new();
        // The server endpoint.
        let mut server = match row {
            Row::Std => {
                let mut cmd = Command::new(&env.exe);
                cmd.arg("__std-server")
                    .arg(server_addr.to_string())
                    .arg(target.to_string());
                ChildGuard::spawn(cmd, "std-server", dir)?
            }
            Row::Smol | Row::SmolTinyproxy | Row::SmolSquid => {
                let mut cmd = Command::new(env.holdwire.clone()?);
                cmd.args(["server", "--no-auth", "--listen"])
                    .arg(server_addr.to_string())
                    .arg("--target")
                    .arg(target.to_string());
                ChildGuard::spawn(cmd, "holdwire-server", dir)?
            }
            _ => {
                let (hts, _) = env.httptunnel.clone()?;
                let mut cmd = Command::new(hts);
                cmd.arg("-w").arg("-F").arg(target.to_string());
                if matches!(row, Row::Ht16m | Row::Ht16mTinyproxy) {
                    cmd.args(["-c", "16M"]);
                }
                cmd.arg(server_addr.to_string());
                ChildGuard::spawn(cmd, "hts", dir)?
            }
        };
        server.wait_listening(server_port, wait)?;
        children.push(server);
        // The lossy relay, in this process (its CPU time is not the tunnel's).
        let relay = match loss {
            Some(loss) => Some(
                smol::block_on(Relay::start(server_addr, loss, 0x5EED ^ next_id()))
                    .map_err(|e| format!("relay: {e}"))?,
            ),
            None => None,
        };
        let via = relay.as_ref().map_or(server_addr, |r| r.addr());
        let url = format!("http://{via}/");
        let client_port = free_port()?;
        // The client endpoint.
        let mut client = match row {
            Row::Std => {
                let mut cmd = Command::new(&env.exe);
                cmd.arg("__std-client")
                    .arg(format!("127.0.0.1:{client_port}"))
                    .arg(&url);
                if let Some(p) = proxy {
                    cmd.arg(format!("http://{p}"));
                }
                ChildGuard::spawn(cmd, "std-client", dir)?
            }
            Row::Smol | Row::SmolTinyproxy | Row::SmolSquid => {
                let mut cmd = Command::new(env.holdwire.clone()?);
                cmd.args(["client", "--no-auth", "--listen"])
                    .arg(format!("127.0.0.1:{client_port}"))
                    .arg("--server")
                    .arg(&url)
                    .env_remove("http_proxy")
                    .env_remove("HTTP_PROXY");
                if let Some(p) = proxy {
                    cmd.arg("--proxy").arg(format!("http://{p}"));
                }
                ChildGuard::spawn(cmd, "holdwire-client", dir)?
            }
            _ => {
                let (_, htc) = env.httptunnel.clone()?;
                let mut cmd = Command::new(htc);
                // htc -F takes a port only and listens on every address; only loopback is
                // used to connect.
                cmd.arg("-w").arg("-F").arg(client_port.to_string());
                if matches!(row, Row::Ht16m | Row::Ht16mTinyproxy) {
                    cmd.args(["-c", "16M"]);
                }
                if let Some(p) = proxy {
                    cmd.arg("-P").arg(p.to_string());
                }
                cmd.arg(via.to_string());
                ChildGuard::spawn(cmd, "htc", dir)?
            }
        };
        client.wait_listening(client_port, wait)?;
        children.push(client);
        Ok(Tunnel {
            entry: SocketAddr::from(([127, 0, 0, 1], client_port)),
            children,
            relay,
        })
    }

    /// The last lines each endpoint logged, for failure reports.
    pub fn log_tails(&self) -> String {
        self.children
            .iter()
            .map(|c| format!("{}: {}", c.name, c.log_tail()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// PIDs of the tunnel's processes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(ChildGuard::pid).collect()
    }
}

/// CPU time (own and reaped children's) and peak RSS of some processes over a measurement,
/// sampled so that processes that exit early still count.
pub struct Usage {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    sampler: Option<thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, Default)]
struct Sample {
    first_ticks: Option<u64>,
    last_ticks: u64,
    peak_rss_kib: u64,
}

/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

fn read_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14 to 17; `after` starts at field 3.
    let sum = fields
        .get(11..15)?
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Some(sum)
}

fn read_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sample(pids: &[u32], samples: &Mutex<Vec<Sample>>) {
    let mut samples = samples.lock().unwrap();
    for (pid, s) in pids.iter().zip(samples.iter_mut()) {
        if let Some(t) = read_ticks(*pid) {
            s.first_ticks.get_or_insert(t);
            s.last_ticks = s.last_ticks.max(t);
        }
        if let Some(h) = read_hwm_kib(*pid) {
            s.peak_rss_kib = s.peak_rss_kib.max(h);
        }
    }
}

impl Usage {
    /// Starts sampling `pids` (a first sample is taken before this returns).
    pub fn start(pids: Vec<u32>) -> Usage {
        let samples = Arc::new(Mutex::new(vec![Sample::default(); pids.len()]));
        sample(&pids, &samples);
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, shared) = (stop.clone(), samples.clone());
        let sampler = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(50));
                sample(&pids, &shared);
            }
            sample(&pids, &shared);
        });
        Usage {
            stop,
            samples,
            sampler: Some(sampler),
        }
    }

    /// Stops sampling: CPU seconds used since the start, and the sum of the peak RSS (KiB).
    pub fn finish(mut self) -> (f64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let samples = self.samples.lock().unwrap();
        let ticks: u64 = samples
            .iter()
            .map(|s| s.last_ticks - s.first_ticks.unwrap_or(s.last_ticks))
            .sum();
        let rss = samples.iter().map(|s| s.peak_rss_kib).sum();
        (ticks as f64 / TICKS_PER_SECOND, rss)
    }
}
