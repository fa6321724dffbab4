//! Scale-out behind a load balancer, with the deployment files of `docs/DEPLOY.md` themselves:
//! three `holdwire server` processes started from the systemd unit's `ExecStart`
//! (`docs/deploy/holdwire@.service`), behind HAProxy (`docs/deploy/haproxy.cfg`) or nginx
//! (`docs/deploy/nginx.conf`), routing on the session id in the URL path.
//!
//! 100 concurrent sessions (holdwire-smol clients with the token) each echo data through the
//! balancer; each server's TCP target tags itself with a first byte, so every session knows
//! which process serves it. No server may refuse a request before the kill (every request of a
//! session reached its own process). Then one server process is killed: exactly its sessions
//! fail, with the library's error, and all the others finish intact.
//!
//! Loopback only, ephemeral ports; every process is killed by PID on drop.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{free_port, require, run, wait_for_port, within, Pattern};
use holdwire_smol::proto::Token;
use holdwire_smol::{connect, ClientOptions};
use smol::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BIN: &str = env!("CARGO_BIN_EXE_holdwire");
const SESSIONS: usize = 100;
const SERVERS: usize = 3;
/// Bytes each session echoes before the kill, and again after it.
const CHUNK: usize = 64 * 1024;
const TOKEN: &str = "deploy-test-token";

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/deploy")
        .join(name)
}

fn read_deploy_file(name: &str) -> String {
    let path = deploy_file(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temporary directory");
    // nginx's workers run as `nobody`.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// A child process, killed by PID and reaped on drop; its stderr is collected.
struct Running {
    name: String,
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(name: &str, mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            // Ends when the process ends.
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Running {
            name: name.into(),
            child,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (at most `limit`) for a stderr line containing `needle`; returns that line.
    fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if Instant::now() >= until || !matches!(self.child.try_wait(), Ok(None)) {
                panic!(
                    "{}: no {needle:?} on stderr within {limit:?}; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL by PID, and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP echo target that first sends its `tag` byte, then echoes; EOF half-closes. Stopped on
/// drop.
struct TaggedEcho {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TaggedEcho {
    fn start(tag: u8) -> TaggedEcho {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo target");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(300);
            while !stopped.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        std::thread::spawn(move || tagged_echo(tcp, tag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TaggedEcho {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

fn tagged_echo(mut tcp: TcpStream, tag: u8) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(120)));
    if tcp.write_all(&[tag]).is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tcp.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = tcp.shutdown(std::net::Shutdown::Write);
}

impl Drop for TaggedEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The deployment, from docs/deploy
// ---------------------------------------------------------------------------------------------

/// The argument list of the unit's `ExecStart`, with the systemd specifiers filled in: `%i`
/// (the instance, a port) and `%d` (the credentials directory).
fn unit_exec_start(instance: &str, credentials: &Path) -> Vec<String> {
    let unit = read_deploy_file("holdwire@.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart line");
    let line = line
        .replace("%i", instance)
        .replace("%d", credentials.to_str().expect("UTF-8 path"));
    assert!(
        !line.contains('%') && !line.contains('\\') && !line.contains('"'),
        "ExecStart uses syntax this test does not expand: {line}"
    );
    line.split_whitespace().map(String::from).collect()
}

/// One `holdwire server` started as the unit would start it, on an ephemeral port, its target
/// replaced by `target`.
struct Server {
    proc: Running,
    addr: SocketAddr,
}

fn start_server(index: usize, target: SocketAddr, credentials: &Path) -> Server {
    let mut args = unit_exec_start("0", credentials);
    assert!(
        args[0].ends_with("/holdwire"),
        "ExecStart runs {} rather than holdwire",
        args[0]
    );
    let at = args
        .iter()
        .position(|a| a == "--target")
        .expect("ExecStart has --target");
    args[at + 1] = target.to_string();
    let mut cmd = Command::new(BIN);
    cmd.args(&args[1..]).env_remove("HOLDWIRE_TOKEN");
    let mut proc = Running::start(&format!("holdwire server {index}"), cmd);
    let line = proc.wait_line("serving http://", Duration::from_secs(20));
    let addr = line
        .split("serving http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the server's address from {line:?}"));
    Server { proc, addr }
}

/// Which load balancer, with the file from docs/deploy that configures it.
#[derive(Clone, Copy, Debug)]
enum Balancer {
    Haproxy,
    Nginx,
}

/// The balancer, running; its temporary directory lives as long as it does.
struct RunningBalancer {
    proc: Running,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Replaces `${NAME}` for each `(NAME, value)`, as `envsubst 'NAMES'` does; every other `$` is
/// left alone (nginx's own variables).
fn substitute(text: &str, vars: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    assert!(
        !out.contains("${HOLDWIRE_"),
        "a ${{HOLDWIRE_...}} variable of the deploy file was not filled in:\n{out}"
    );
    out
}

fn start_balancer(kind: Balancer, servers: &[SocketAddr]) -> Option<RunningBalancer> {
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = temp_dir("hw-deploy-");
    let proc = match kind {
        Balancer::Haproxy => {
            let bin = require("haproxy")?;
            // The file is used as it is: HAProxy reads the addresses from the environment.
            let mut cmd = Command::new(bin);
            cmd.arg("-db").arg("-f").arg(deploy_file("haproxy.cfg"));
            cmd.env("HOLDWIRE_FRONTEND", addr.to_string());
            for (i, s) in servers.iter().enumerate() {
                cmd.env(format!("HOLDWIRE_SERVER{}", i + 1), s.to_string());
            }
            Running::start("haproxy", cmd)
        }
        Balancer::Nginx => {
            let bin = require("nginx")?;
            let mut vars = vec![("HOLDWIRE_LISTEN", addr.to_string())];
            let names = ["HOLDWIRE_SERVER1", "HOLDWIRE_SERVER2", "HOLDWIRE_SERVER3"];
            for (name, s) in names.iter().zip(servers) {
                vars.push((name, s.to_string()));
            }
            let snippet = substitute(&read_deploy_file("nginx.conf"), &vars);
            let d = dir.path().display();
            std::fs::write(dir.path().join("holdwire.conf"), snippet).expect("write snippet");
            for sub in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                std::fs::create_dir(dir.path().join(sub)).expect("nginx temp dir");
            }
            // The main context a distribution's nginx.conf provides, including the snippet.
            let main = format!(
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
                   include {d}/holdwire.conf;\n\
                 }}\n"
            );
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, main).expect("write nginx.conf");
            let mut cmd = Command::new(bin);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf)
                .arg("-g")
                .arg("daemon off;");
            Running::start("nginx", cmd)
        }
    };
    if !wait_for_port(addr, Duration::from_secs(15)) {
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!(
            "{kind:?} did not listen on {addr}:\n{}\n{log}",
            proc.stderr()
        );
    }
    Some(RunningBalancer {
        proc,
        addr,
        _dir: dir,
    })
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

fn pattern(seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; CHUNK];
    Pattern::new(seed).fill(&mut data);
    data
}

/// One session: learns its server from the target's tag, echoes a chunk, reports
/// `(index, tag)` on `ready`, waits for `go` to close, then echoes a second chunk, half-closes
/// and reads the echo to its end. Returns its server's tag, or what failed.
async fn session(
    index: usize,
    options: ClientOptions,
    ready: smol::channel::Sender<Result<(usize, u8), String>>,
    go: smol::channel::Receiver<()>,
) -> Result<u8, String> {
    let first = async {
        let stream = connect(options)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut r, mut w) = stream.split();
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)
            .await
            .map_err(|e| format!("read the tag: {e}"))?;
        let a = pattern(index as u64 * 2 + 1);
        w.write_all(&a).await.map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; CHUNK];
        r.read_exact(&mut back)
            .await
            .map_err(|e| format!("read the echo: {e}"))?;
        if back != a {
            return Err("the first echo differs".to_string());
        }
        Ok((tag[0], r, w))
    };
    let (tag, mut r, mut w) = match first.await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(format!("session {index}: {e}"))).await;
            return Err(e);
        }
    };
    let _ = ready.send(Ok((index, tag))).await;
    // Closed (not sent to) when the test lets the sessions go on.
    let _ = go.recv().await;
    let b = pattern(index as u64 * 2 + 2);
    let echoed = smol::spawn(async move {
        let mut back = Vec::with_capacity(CHUNK);
        r.read_to_end(&mut back).await.map(|_| back)
    });
    w.write_all(&b)
        .await
        .map_err(|e| format!("write after the kill: {e}"))?;
    w.close()
        .await
        .map_err(|e| format!("close after the kill: {e}"))?;
    let back = echoed
        .await
        .map_err(|e| format!("read after the kill: {e}"))?;
    if back != b {
        return Err(format!(
            "the second echo differs ({} of {CHUNK} bytes)",
            back.len()
        ));
    }
    Ok(tag)
}

fn scale_out(kind: Balancer) {
    // Three servers, each with a target that tags itself 0, 1, 2.
    let dir = temp_dir("hw-deploy-credentials-");
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).expect("write the token");
    let targets: Vec<TaggedEcho> = (0..SERVERS as u8).map(TaggedEcho::start).collect();
    let mut servers: Vec<Server> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| start_server(i, t.addr, dir.path()))
        .collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let Some(balancer) = start_balancer(kind, &addrs) else {
        return;
    };
    let mut options = ClientOptions::new(&format!("http://{}/", balancer.addr)).expect("URL");
    options.protocol.token = Some(Token::new(TOKEN.as_bytes()));
    // A backstop only: a killed server's sessions should fail long before this.
    options.protocol.silence_timeout = Duration::from_secs(30);
    options.protocol.open_timeout = options.protocol.open_timeout.min(Duration::from_secs(30));

    let (per_server, results, killed) = run(Duration::from_secs(150), async {
        let (ready_tx, ready_rx) = smol::channel::unbounded();
        let (go_tx, go_rx) = smol::channel::bounded::<()>(1);
        let tasks: Vec<_> = (0..SESSIONS)
            .map(|i| smol::spawn(session(i, options.clone(), ready_tx.clone(), go_rx.clone())))
            .collect();
        let mut tags = vec![0u8; SESSIONS];
        for _ in 0..SESSIONS {
            match within(Duration::from_secs(60), ready_rx.recv()).await {
                Ok(Ok(Ok((i, tag)))) => tags[i] = tag,
                Ok(Ok(Err(e))) => panic!(
                    "{kind:?}: before any kill, {e}; {kind:?} log:\n{}",
                    balancer.proc.stderr()
                ),
                other => panic!(
                    "{kind:?}: sessions did not all start: {other:?}; {kind:?} log:\n{}",
                    balancer.proc.stderr()
                ),
            }
        }
        let mut per_server = BTreeMap::new();
        for &t in &tags {
            *per_server.entry(t).or_insert(0usize) += 1;
        }
        // Every request of every session reached the process that holds the session: no
        // server refused one (a request routed elsewhere is refused with 404).
        for (i, s) in servers.iter().enumerate() {
            let log = s.proc.stderr();
            assert!(
                !log.contains("refused a request"),
                "{kind:?}: server {i} refused requests before any kill (a session's requests \
                 were spread over servers):\n{log}"
            );
        }
        // Kill the server with the most sessions.
        let killed = *per_server
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(t, _)| t)
            .expect("sessions");
        servers[killed as usize].proc.kill();
        drop(go_tx);
        let mut results = Vec::with_capacity(SESSIONS);
        for (i, task) in tasks.into_iter().enumerate() {
            let r = within(Duration::from_secs(90), task)
                .await
                .unwrap_or_else(|e| panic!("{kind:?}: session {i} hung after the kill: {e}"));
            results.push((tags[i], r));
        }
        (per_server, results, killed)
    });

    let failed: Vec<&String> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    let mut reasons: Vec<&str> = failed.iter().map(|e| e.as_str()).collect();
    reasons.sort();
    reasons.dedup();
    println!(
        "{kind:?}: {SESSIONS} sessions over servers {per_server:?}; killed server {killed}: \
         {} sessions failed with {reasons:?}",
        failed.len()
    );
    for (i, (tag, result)) in results.iter().enumerate() {
        match result {
            Ok(t) => {
                assert_ne!(
                    *t, killed,
                    "{kind:?}: session {i} of the killed server {killed} finished"
                );
                assert_eq!(t, tag);
            }
            Err(e) => assert_eq!(
                *tag,
                killed,
                "{kind:?}: session {i} of server {tag} failed, yet only server {killed} was \
                 killed: {e}\nits log:\n{}",
                servers[*tag as usize].proc.stderr()
            ),
        }
    }
    assert_eq!(
        failed.len(),
        per_server[&killed],
        "every session of the killed server fails"
    );
    drop(balancer);
}

#[test]
fn haproxy_routes_sessions_by_id_and_survives_a_killed_server() {
    scale_out(Balancer::Haproxy);
}

#[test]
fn nginx_routes_sessions_by_id_and_survives_a_killed_server() {
    scale_out(Balancer::Nginx);
}

/// `docs/DEPLOY.md` quotes each file of `docs/deploy` in full after a `<!-- file: deploy/NAME -->`
/// marker; the quotes must be the files the tests above run, byte for byte.
#[test]
fn deploy_md_quotes_the_tested_files_verbatim() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOY.md");
    let doc = std::fs::read_to_string(&path).expect("read docs/DEPLOY.md");
    let mut quoted = Vec::new();
    for (at, _) in doc.match_indices("<!-- file: deploy/") {
        let rest = &doc[at + "<!-- file: deploy/".len()..];
        let (name, rest) = rest.split_once(" -->\n").expect("a closed marker");
        let rest = rest
            .strip_prefix("```")
            .expect("a fenced block after the marker");
        let (_lang, rest) = rest.split_once('\n').expect("the fence's line");
        let end = rest.find("\n```\n").expect("the closing fence");
        let block = &rest[..=end];
        assert_eq!(
            block,
            read_deploy_file(name),
            "docs/DEPLOY.md's copy of docs/deploy/{name} differs from the file"
        );
        quoted.push(name.to_string());
    }
    quoted.sort();
    let mut files: Vec<String> = std::fs::read_dir(deploy_file(""))
        .expect("list docs/deploy")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(quoted, files, "every file of docs/deploy is quoted once");
}
