//! `holdwire client`: local TCP connections (or stdin/stdout) through sessions to a server.

use std::io::ErrorKind;
use std::time::Duration;

use futures_lite::{AsyncWriteExt, StreamExt};
use holdwire_smol::proto::url::Scheme;
use holdwire_smol::{connect, copy_bidirectional, ClientOptions, Stream};
use smol::net::TcpListener;

use crate::serve::SessionLog;
use crate::{seconds, token, ClientArgs, EXIT_AUTH, EXIT_CONFIG};

pub fn run(args: ClientArgs) -> Result<(), (u8, String)> {
    let options = options(&args).map_err(|m| (EXIT_CONFIG, m))?;
    smol::block_on(async move {
        if args.stdio {
            return stdio(options).await;
        }
        let listen = args.listen.as_deref().unwrap_or_default();
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| (1, format!("cannot listen on {listen}: {e}")))?;
        let local = listener.local_addr().map_err(|e| (1, e.to_string()))?;
        tracing::info!("forwarding {local} -> {}", args.server);
        let (auth_failed_tx, auth_failed) = smol::channel::bounded::<String>(1);
        let mut signals =
            async_signal::Signals::new([async_signal::Signal::Term, async_signal::Signal::Int])
                .map_err(|e| (1, format!("cannot handle signals: {e}")))?;
        enum Next {
            Conn(std::io::Result<(smol::net::TcpStream, std::net::SocketAddr)>),
            AuthFailed(String),
            Stop,
        }
        loop {
            let accepted = async { Next::Conn(listener.accept().await) };
            let refused = async {
                match auth_failed.recv().await {
                    Ok(m) => Next::AuthFailed(m),
                    Err(_) => std::future::pending().await,
                }
            };
            let signalled = async {
                signals.next().await;
                Next::Stop
            };
            match smol::future::or(accepted, smol::future::or(refused, signalled)).await {
                Next::Conn(Ok((tcp, peer))) => {
                    let _ = tcp.set_nodelay(true);
                    let options = options.clone();
                    let auth_failed = auth_failed_tx.clone();
                    smol::spawn(async move {
                        match connect(options).await {
                            Ok(stream) => {
                                let log =
                                    SessionLog::opened(&stream, &format!("connection from {peer}"));
                                let result = copy_bidirectional(stream.clone(), tcp).await;
                                log.closed(&stream, &result.map(|(down, up)| (down, Some(up))));
                            }
                            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                                let _ = auth_failed.try_send(e.to_string());
                            }
                            Err(e) => tracing::warn!("connection from {peer}: {e}"),
                        }
                    })
                    .detach();
                }
                Next::Conn(Err(e)) => tracing::warn!("accept failed: {e}"),
                Next::AuthFailed(m) => return Err((EXIT_AUTH, format!("server refused us: {m}"))),
                Next::Stop => return Ok(()),
            }
        }
    })
}

/// One session carrying stdin to the server and the server's bytes to stdout.
async fn stdio(options: ClientOptions) -> Result<(), (u8, String)> {
    let stream = connect(options).await.map_err(|e| {
        let code = if e.kind() == ErrorKind::PermissionDenied {
            EXIT_AUTH
        } else {
            1
        };
        (code, format!("cannot open the session: {e}"))
    })?;
    let log = SessionLog::opened(&stream, "stdio");
    let observer = stream.clone();
    let mut writer: Stream = stream.clone();
    let up = async move {
        let stdin = smol::Unblock::new(std::io::stdin());
        let result = smol::io::copy(stdin, &mut writer).await;
        let _ = writer.close().await;
        result
    };
    let down = async move {
        let mut stdout = smol::Unblock::new(std::io::stdout());
        let result = smol::io::copy(stream, &mut stdout).await;
        let _ = stdout.flush().await;
        result
    };
    // Upload runs in the background: stdin may never end, while the server's end of the stream
    // ends the command.
    let up = smol::spawn(up);
    let copied = down.await;
    drop(up);
    log.closed(
        &observer,
        &copied
            .as_ref()
            .map(|&n| (n, None))
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
    );
    copied
        .map(|_| ())
        .map_err(|e| (1, format!("session failed: {e}")))
}

/// How a stream reaches the server, for the log: the direct path or a session id.
fn options(args: &ClientArgs) -> Result<ClientOptions, String> {
    if let Some(listen) = &args.listen {
        crate::serve::check_host_port("--listen", listen)?;
    }
    if let Some(direct) = &args.direct {
        crate::serve::check_host_port("--direct", direct)?;
    }
    let token = token::resolve(&args.token)?;
    let mut options = ClientOptions::new(&args.server).map_err(|e| e.to_string())?;
    options = match &args.proxy {
        Some(proxy) => options.proxy(proxy).map_err(|e| e.to_string())?,
        None => options
            .proxy_from_env(|k| std::env::var(k).ok())
            .map_err(|e| e.to_string())?,
    };
    if options.server.scheme == Scheme::Https || args.ca.is_some() {
        return Err("https:// servers (and --ca) are not supported by this build yet".into());
    }
    if let Some(direct) = &args.direct {
        options = options.direct(direct);
    }
    options.direct_timeout = seconds("--direct-timeout", args.direct_timeout)?;
    options.protocol.silence_timeout = seconds("--silence-timeout", args.silence_timeout)?;
    options.protocol.open_timeout = options
        .protocol
        .open_timeout
        .min(options.protocol.silence_timeout);
    options.protocol.token = token;
    options.connect_timeout = Duration::from_secs(10);
    Ok(options)
}
