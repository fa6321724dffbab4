//! A netcat for holdwire: copies stdin to the stream and the stream to stdout.
//!
//! ```text
//! cargo run -p holdwire-std --example cat -- http://127.0.0.1:8080/ [direct-host:port]
//! ```
//!
//! The proxy comes from `http_proxy` / `no_proxy` as curl reads them; a second argument is a
//! plain TCP address tried first.

use std::io::{self, Write};
use std::net::Shutdown;
use std::thread;

use holdwire_std::{ClientOptions, Stream};

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "usage: cat URL [DIRECT]"))?;
    let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
    let mut options = ClientOptions::new(&url)
        .map_err(invalid)?
        .proxy_from_env(|k| std::env::var(k).ok())
        .map_err(invalid)?;
    if let Some(direct) = args.next() {
        options = options.direct(&direct);
    }
    let stream = Stream::connect(options)?;
    eprintln!("connected: {}", stream.peer()?);
    let mut writer = stream.try_clone()?;
    let up = thread::spawn(move || -> io::Result<()> {
        io::copy(&mut io::stdin().lock(), &mut writer)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream;
    io::copy(&mut reader, &mut io::stdout().lock())?;
    io::stdout().flush()?;
    // The peer finished; stdin may still be open: do not wait for it.
    if up.is_finished() {
        up.join()
            .map_err(|_| io::Error::other("stdin thread panicked"))??;
    }
    // Background work dies with the process: wait for the clean close.
    reader.close()
}
