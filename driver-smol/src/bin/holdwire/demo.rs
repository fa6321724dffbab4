//! `holdwire demo`: an echo target, a server and a client on loopback, optionally with a lossy
//! relay between client and server; a checksummed bulk transfer and a ping-pong through them.

use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use holdwire_smol::proto::Token;
use holdwire_smol::relay::Relay;
use holdwire_smol::{connect, ClientOptions, Listener, ServerConfig, Stream};
use smol::net::TcpListener;

use crate::{serve, DemoArgs, EXIT_CONFIG, EXIT_INTEGRITY};

pub fn run(args: DemoArgs) -> Result<(), (u8, String)> {
    if !(0.0..=50.0).contains(&args.loss) {
        return Err((
            EXIT_CONFIG,
            "--loss must be between 0 and 50 percent".into(),
        ));
    }
    if args.mib == 0 || args.mib > 64 * 1024 || args.pings == 0 {
        return Err((
            EXIT_CONFIG,
            "--mib must be 1..=65536 and --pings at least 1".into(),
        ));
    }
    smol::block_on(demo(args)).map_err(|e| (1, e))?
}

async fn demo(args: DemoArgs) -> Result<Result<(), (u8, String)>, String> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    // The target: an echo server.
    let echo = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err("echo target"))?;
    let echo_addr = echo.local_addr().map_err(err("echo target"))?;
    smol::spawn(async move {
        while let Ok((tcp, _)) = echo.accept().await {
            smol::spawn(async move {
                let (reader, mut writer) = (tcp.clone(), tcp);
                let _ = smol::io::copy(reader, &mut writer).await;
                let _ = writer.close().await;
            })
            .detach();
        }
    })
    .detach();

    // The server, with a fresh random token.
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| format!("random token: {e}"))?;
    let token = Token::new(&secret);
    let config = ServerConfig {
        token: Some(token.clone()),
        ..ServerConfig::default()
    };
    let listener = Listener::bind("127.0.0.1:0", config)
        .await
        .map_err(err("server"))?;
    let server_addr = listener.local_addr().map_err(err("server"))?;
    let target = echo_addr.to_string();
    smol::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let target = target.clone();
            smol::spawn(async move {
                let _ = serve::serve_session(stream, &target).await;
            })
            .detach();
        }
    })
    .detach();

    // The path between client and server.
    let (url, relay) = if args.loss > 0.0 {
        let seed = Instant::now().elapsed().as_nanos() as u64 ^ 0x5EED;
        let relay = Relay::start(server_addr, args.loss / 100.0, seed)
            .await
            .map_err(err("lossy relay"))?;
        (format!("http://{}/", relay.addr()), Some(relay))
    } else {
        (format!("http://{server_addr}/"), None)
    };
    let mut options = ClientOptions::new(&url).map_err(|e| e.to_string())?;
    options.protocol.token = Some(token);
    options.protocol.max_failures = 1000;
    println!("holdwire demo: echo target {echo_addr}, server {server_addr}, client -> {url}");
    if args.loss > 0.0 {
        println!(
            "  a relay between client and server drops {}% of HTTP requests and responses",
            args.loss
        );
    }

    // Bulk: push the data, read the echo, compare.
    let bytes = args.mib * 1024 * 1024;
    let stream = connect(options.clone())
        .await
        .map_err(err("opening a session"))?;
    let start = Instant::now();
    let writer = {
        let mut stream = stream.clone();
        smol::spawn(async move {
            let mut rng = Gen::new(0x1234_5678);
            let mut chunk = vec![0u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                rng.fill(&mut chunk[..n]);
                stream.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            stream.close().await
        })
    };
    let mut expected = Gen::new(0x1234_5678);
    let mut reader = stream.clone();
    let mut got = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let mut intact = true;
    loop {
        let n = reader
            .read(&mut got)
            .await
            .map_err(err("reading the echo"))?;
        if n == 0 {
            break;
        }
        expected.fill(&mut want[..n]);
        intact &= got[..n] == want[..n];
        received += n as u64;
    }
    writer.await.map_err(err("writing"))?;
    let elapsed = start.elapsed();
    intact &= received == bytes;
    let stats = stream.stats().unwrap_or_default();
    let rate = bytes as f64 / elapsed.as_secs_f64() / 1e6;
    println!(
        "bulk: {} MiB up and back in {:.2?}: {rate:.1} MB/s each way, {}",
        args.mib,
        elapsed,
        if intact {
            "every byte intact"
        } else {
            "DATA MISMATCH"
        }
    );
    println!(
        "      {} requests, {} failed, {} messages resent",
        stats.exchanges, stats.failed_exchanges, stats.messages_resent
    );
    drop(stream);

    // Ping-pong: 64-byte messages, one at a time.
    let stream = connect(options).await.map_err(err("opening a session"))?;
    let (rtts, pong_ok) = ping_pong(&stream, args.pings)
        .await
        .map_err(err("ping-pong"))?;
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize];
    println!(
        "ping-pong: {} round trips of 64 bytes: p50 {:.2?}, p99 {:.2?}, {}",
        rtts.len(),
        pct(0.5),
        pct(0.99),
        if pong_ok {
            "every reply intact"
        } else {
            "DATA MISMATCH"
        }
    );
    let stats = stream.stats().unwrap_or_default();
    println!(
        "      {} requests, {} failed, {} messages resent",
        stats.exchanges, stats.failed_exchanges, stats.messages_resent
    );
    if let Some(relay) = &relay {
        let relay = relay.stats();
        println!(
            "relay: {} HTTP messages forwarded, {} dropped",
            relay.forwarded.load(std::sync::atomic::Ordering::Relaxed),
            relay.dropped.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    if intact && pong_ok {
        println!("result: OK");
        Ok(Ok(()))
    } else {
        Ok(Err((EXIT_INTEGRITY, "data was lost or corrupted".into())))
    }
}

async fn ping_pong(stream: &Stream, pings: u32) -> std::io::Result<(Vec<Duration>, bool)> {
    let mut s = stream.clone();
    let mut rtts = Vec::with_capacity(pings as usize);
    let mut ok = true;
    let mut msg = [0u8; 64];
    let mut reply = [0u8; 64];
    for i in 0..pings + 20 {
        msg[..4].copy_from_slice(&i.to_be_bytes());
        let start = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut reply).await?;
        ok &= reply == msg;
        if i >= 20 {
            // After a warm-up.
            rtts.push(start.elapsed());
        }
    }
    rtts.sort();
    s.close().await?;
    Ok((rtts, ok))
}

/// A deterministic byte stream addressed by position (so writes and reads of any sizes agree):
/// byte `i` is byte `i % 8` of a SplitMix64 hash of `i / 8` and the seed.
struct Gen {
    seed: u64,
    pos: u64,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen { seed, pos: 0 }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            let mut z = (self.pos / 8)
                .wrapping_add(self.seed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            *byte = z.to_le_bytes()[(self.pos % 8) as usize];
            self.pos += 1;
        }
    }
}
