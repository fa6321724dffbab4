//! A holdwire echo server: every session (or raw TCP connection) gets back what it sends, and
//! its stream is half-closed once the client's ends.
//!
//! ```text
//! cargo run -p holdwire-smol --example smol_echo_server -- [HTTP_ADDR] [DIRECT_ADDR]
//! ```
//! Prints `http ADDR` (and `direct ADDR`) on stdout once listening. The failure tests start it
//! as a child process and kill it mid-transfer.

use std::io::Write as _;

use holdwire_smol::{Listener, ServerConfig};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let http = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let direct = args.next();
    smol::block_on(async {
        let config = ServerConfig::default();
        let listener = match &direct {
            Some(d) => Listener::bind_with_direct(http.as_str(), d.as_str(), config).await?,
            None => Listener::bind(http.as_str(), config).await?,
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "http {}", listener.local_addr()?)?;
        if let Some(d) = listener.direct_addr() {
            writeln!(out, "direct {d}")?;
        }
        out.flush()?;
        drop(out);
        loop {
            let (stream, _) = listener.accept().await?;
            smol::spawn(async move {
                let (reader, mut writer) = stream.split();
                if smol::io::copy(reader, &mut writer).await.is_ok() {
                    let _ = smol::io::AsyncWriteExt::close(&mut writer).await;
                }
            })
            .detach();
        }
    })
}
