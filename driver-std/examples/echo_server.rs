//! An echo server: every stream it accepts is sent back to its sender.
//!
//! ```text
//! cargo run -p holdwire-std --example echo_server -- 127.0.0.1:8080 [127.0.0.1:8081]
//! ```
//!
//! The first address serves holdwire over HTTP (at `http://ADDR/`), the optional second one
//! plain TCP for clients that try the direct path first.

use std::io;
use std::net::Shutdown;
use std::thread;

use holdwire_std::{Listener, ServerConfig, Stream};

fn echo(stream: Stream) -> io::Result<u64> {
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let n = io::copy(&mut reader, &mut writer)?;
    writer.shutdown(Shutdown::Write)?;
    Ok(n)
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let http = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = match args.next() {
        Some(direct) => Listener::bind_with_direct(&http, &direct, ServerConfig::default())?,
        None => Listener::bind(&http, ServerConfig::default())?,
    };
    println!("holdwire echo on http://{}/", listener.local_addr()?);
    if let Some(direct) = listener.direct_addr() {
        println!("plain TCP on {direct}");
    }
    for stream in listener.incoming() {
        let stream = stream?;
        thread::spawn(move || {
            let peer = stream.peer().map(|p| p.to_string()).unwrap_or_default();
            match echo(stream) {
                Ok(n) => eprintln!("{peer}: echoed {n} bytes"),
                Err(e) => eprintln!("{peer}: {e}"),
            }
        });
    }
    Ok(())
}
