//! Server and proxy URLs, and the choice of proxy from the usual environment variables.
//!
//! # Theory of operation
//!
//! [`Url::parse`] accepts the small subset of RFC 3986 a holdwire endpoint needs:
//! `http://` or `https://`, optional `user:password@` (percent-decoded), a host name,
//! IPv4 literal or bracketed IPv6 literal, an optional port, and a path. Anything that
//! would need escaping on the wire (spaces, control characters, non-ASCII) is rejected,
//! as are queries and fragments, so the parts can be written into a request head as
//! they are. Host names are lowercased; the path loses its trailing slashes so that
//! [`Url::session_path`] can append the session id.
//!
//! [`proxy_for`] is a pure function of the target and the values of `http_proxy`,
//! `https_proxy` and `no_proxy` that the caller read; `no_proxy` follows curl
//! (`lib/noproxy.c`): entries separated by commas or whitespace, `*` for everything,
//! a domain (with or without a leading dot) matching itself and its subdomains, IP
//! literals and CIDR ranges matching IP-literal targets only (no name resolution), and
//! in addition an optional `:port` restricting an entry to one port.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::{self, Write as _};
use core::net::{IpAddr, Ipv6Addr};

/// The URL scheme: how the byte stream reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP, default port 80.
    Http,
    /// HTTP over TLS, default port 443.
    Https,
}

impl Scheme {
    /// 80 for `http`, 443 for `https`.
    pub fn default_port(&self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// A parsed `http://` or `https://` URL, as holdwire uses for servers and proxies.
#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name (lowercased), IPv4 literal, or IPv6 literal without brackets.
    pub host: String,
    /// The port, the scheme's default when the URL has none.
    pub port: u16,
    /// The path: starts with `/`, no trailing `/` unless it is `/`; still
    /// percent-encoded as written.
    pub path: String,
    /// User name from the userinfo, percent-decoded.
    pub username: Option<String>,
    /// Password from the userinfo, percent-decoded.
    pub password: Option<String>,
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passwords stay out of logs.
        f.debug_struct("Url")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why a URL (or a proxy setting) was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UrlError {
    /// No `scheme://` prefix.
    MissingScheme,
    /// A scheme other than `http` or `https`.
    UnsupportedScheme,
    /// A space, control character or non-ASCII character.
    InvalidCharacter,
    /// Nothing between `//` (or `@`) and the port or path.
    EmptyHost,
    /// A host with characters outside letters, digits, `-`, `.`, `_`, or an invalid
    /// bracketed IPv6 literal.
    InvalidHost,
    /// A port that is empty, not a number, 0, or above 65535.
    InvalidPort,
    /// A `%` not followed by two hex digits, or userinfo that decodes to invalid UTF-8.
    InvalidPercentEncoding,
    /// A `?` query or `#` fragment.
    QueryOrFragment,
    /// A path character that must be percent-encoded.
    InvalidPath,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MissingScheme => "url has no scheme (expected http:// or https://)",
            Self::UnsupportedScheme => "url scheme is not http or https",
            Self::InvalidCharacter => "url contains a space, control or non-ascii character",
            Self::EmptyHost => "url has an empty host",
            Self::InvalidHost => "url has an invalid host",
            Self::InvalidPort => "url has an invalid port",
            Self::InvalidPercentEncoding => "url has invalid percent-encoding",
            Self::QueryOrFragment => "url has a query or fragment",
            Self::InvalidPath => "url path has a character that must be percent-encoded",
        })
    }
}

// The same trait as `std::error::Error`, available without std since Rust 1.81.
impl core::error::Error for UrlError {}

impl Url {
    /// Parses `http://[user[:password]@]host[:port][/path]` or the same with `https://`.
    ///
    /// Default ports are 80 and 443; IPv6 literals go in brackets. Rejects spaces and
    /// control characters, an empty host, port 0 or above 65535, and any `?` or `#`.
    pub fn parse(s: &str) -> Result<Url, UrlError> {
        if s.bytes().any(|b| b <= b' ' || b >= 0x7f) {
            return Err(UrlError::InvalidCharacter);
        }
        let (scheme, rest) = if let Some(rest) = strip_prefix_ignore_case(s, "http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(s, "https://") {
            (Scheme::Https, rest)
        } else if s.contains("://") {
            return Err(UrlError::UnsupportedScheme);
        } else {
            return Err(UrlError::MissingScheme);
        };
        if rest.contains(['?', '#']) {
            return Err(UrlError::QueryOrFragment);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let (userinfo, host_port) = match authority.rfind('@') {
            Some(i) => (&authority[..i], &authority[i + 1..]),
            None => ("", authority),
        };
        let (username, password) = if userinfo.is_empty() {
            (None, None)
        } else {
            match userinfo.split_once(':') {
                Some((user, password)) => {
                    (Some(percent_decode(user)?), Some(percent_decode(password)?))
                }
                None => (Some(percent_decode(userinfo)?), None),
            }
        };
        let (host, port) = split_host_port(host_port)?;
        let port = match port {
            Some(digits) => parse_port(digits).ok_or(UrlError::InvalidPort)?,
            None => scheme.default_port(),
        };
        validate_path(path)?;
        let trimmed = path.trim_end_matches('/');
        let path = if trimmed.is_empty() { "/" } else { trimmed };
        Ok(Url {
            scheme,
            host,
            port,
            path: path.into(),
            username,
            password,
        })
    }

    /// The `Host` header value: `host`, or `host:port` when the port is not the
    /// scheme's default; IPv6 literals in brackets.
    pub fn host_header(&self) -> String {
        let mut s = self.bracketed_host();
        if self.port != self.scheme.default_port() {
            // Writing to a String cannot fail.
            let _ = write!(s, ":{}", self.port);
        }
        s
    }

    /// `host:port`, always with the port and with brackets around IPv6 literals: the
    /// address to connect to, and the target of a `CONNECT`.
    pub fn authority(&self) -> String {
        let mut s = self.bracketed_host();
        let _ = write!(s, ":{}", self.port);
        s
    }

    /// The path of a session's endpoint: this URL's path joined with `/` and the
    /// session id (32 hex digits), without a double slash.
    pub fn session_path(&self, session_hex: &str) -> String {
        let base = self.path.trim_end_matches('/');
        let mut s = String::with_capacity(base.len() + 1 + session_hex.len());
        s.push_str(base);
        s.push('/');
        s.push_str(session_hex);
        s
    }

    fn bracketed_host(&self) -> String {
        let mut s = String::with_capacity(self.host.len() + 8);
        if self.host.contains(':') {
            s.push('[');
            s.push_str(&self.host);
            s.push(']');
        } else {
            s.push_str(&self.host);
        }
        s
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the host is validated and lowercased.
fn split_host_port(s: &str) -> Result<(String, Option<&str>), UrlError> {
    if let Some(rest) = s.strip_prefix('[') {
        let close = rest.find(']').ok_or(UrlError::InvalidHost)?;
        let literal = &rest[..close];
        if literal.is_empty() {
            return Err(UrlError::EmptyHost);
        }
        literal
            .parse::<Ipv6Addr>()
            .map_err(|_| UrlError::InvalidHost)?;
        let port = match &rest[close + 1..] {
            "" => None,
            after => Some(after.strip_prefix(':').ok_or(UrlError::InvalidHost)?),
        };
        return Ok((literal.to_ascii_lowercase(), port));
    }
    let (host, port) = match s.rfind(':') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if host.is_empty() {
        return Err(UrlError::EmptyHost);
    }
    let host_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if !host.bytes().all(host_byte) {
        return Err(UrlError::InvalidHost);
    }
    Ok((host.to_ascii_lowercase(), port))
}

/// 1 to 65535, decimal digits only.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

/// The path may hold RFC 3986 `pchar`s and `/`, with well-formed percent-escapes.
fn validate_path(path: &str) -> Result<(), UrlError> {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(UrlError::InvalidPercentEncoding)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(UrlError::InvalidPercentEncoding);
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
                    | b'/'
            );
        if !allowed {
            return Err(UrlError::InvalidPath);
        }
        i += 1;
    }
    Ok(())
}

fn percent_decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
            let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(UrlError::InvalidPercentEncoding);
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::InvalidPercentEncoding)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Decides which proxy, if any, to use for `target`.
///
/// The arguments are the values of the environment variables, which the caller reads
/// (this function reads nothing): `http_proxy` is used for `http` targets and
/// `https_proxy` for `https` targets (the caller picks lowercase over uppercase), and
/// `no_proxy` lists the hosts to reach directly, with curl's semantics plus an optional
/// `:port` per entry (see the module docs). An empty or blank proxy value means no
/// proxy; a value without a scheme means `http://`. A proxy without a port uses its
/// scheme's default (80), as Go and Python do; curl would use 1080.
///
/// Returns an error only for a proxy value that does not parse, and not when
/// `no_proxy` excludes the target anyway. Malformed `no_proxy` entries are ignored.
pub fn proxy_for(
    target: &Url,
    http_proxy: Option<&str>,
    https_proxy: Option<&str>,
    no_proxy: Option<&str>,
) -> Result<Option<Url>, UrlError> {
    let setting = match target.scheme {
        Scheme::Http => http_proxy,
        Scheme::Https => https_proxy,
    };
    let Some(setting) = setting.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if no_proxy.is_some_and(|list| no_proxy_matches(target, list)) {
        return Ok(None);
    }
    if setting.contains("://") {
        Url::parse(setting).map(Some)
    } else {
        let mut with_scheme = String::with_capacity(7 + setting.len());
        with_scheme.push_str("http://");
        with_scheme.push_str(setting);
        Url::parse(&with_scheme).map(Some)
    }
}

/// True if an entry of the `no_proxy` list covers `target`.
fn no_proxy_matches(target: &Url, list: &str) -> bool {
    let host = target.host.strip_suffix('.').unwrap_or(&target.host);
    let ip = host.parse::<IpAddr>().ok();
    for entry in list.split(|c: char| c == ',' || c.is_ascii_whitespace()) {
        if entry.is_empty() {
            continue;
        }
        if entry == "*" {
            return true;
        }
        let Some((pattern, port)) = split_entry(entry) else {
            continue;
        };
        if port.is_some_and(|port| port != target.port) {
            continue;
        }
        let matched = match ip {
            Some(ip) => ip_matches(ip, pattern),
            None => domain_matches(host, pattern),
        };
        if matched {
            return true;
        }
    }
    false
}

/// Splits an entry into its host pattern and optional port: `host:port`,
/// `[v6]:port`, `[v6]`; entries with several colons (bare IPv6, CIDR) have no port.
fn split_entry(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let close = rest.find(']')?;
        let port = match &rest[close + 1..] {
            "" => None,
            after => Some(parse_port(after.strip_prefix(':')?)?),
        };
        return Some((&rest[..close], port));
    }
    match entry.split_once(':') {
        Some((host, port)) if !port.contains(':') => Some((host, Some(parse_port(port)?))),
        _ => Some((entry, None)),
    }
}

/// `pattern` is a domain: matches it and its subdomains, ignoring case, a leading dot
/// and a trailing dot.
fn domain_matches(host: &str, pattern: &str) -> bool {
    let pattern = pattern.strip_prefix('.').unwrap_or(pattern);
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    if pattern.is_empty() || pattern.len() > host.len() {
        return false;
    }
    let split = host.len() - pattern.len();
    let (head, tail) = host.as_bytes().split_at(split);
    tail.eq_ignore_ascii_case(pattern.as_bytes()) && (head.is_empty() || head.ends_with(b"."))
}

/// `pattern` is an IP literal (exact match) or a CIDR range `addr/bits`.
fn ip_matches(ip: IpAddr, pattern: &str) -> bool {
    let (addr, bits) = match pattern.split_once('/') {
        Some((addr, bits)) => match bits.parse::<u8>() {
            Ok(bits) => (addr, Some(bits)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => prefix_eq(
            u128::from(u32::from(ip)),
            u128::from(u32::from(net)),
            32,
            bits,
        ),
        (IpAddr::V6(ip), IpAddr::V6(net)) => prefix_eq(u128::from(ip), u128::from(net), 128, bits),
        _ => false,
    }
}

/// The first `bits` (default: all) of two `width`-bit addresses are equal.
fn prefix_eq(a: u128, b: u128, width: u32, bits: Option<u8>) -> bool {
    let bits = bits.map_or(width, u32::from);
    if bits > width {
        return false;
    }
    // Shifting out the low `width - bits` bits leaves the prefix; checked_shr is None
    // for a shift by 128 (a /0 on IPv6), where every address matches.
    let shift = width - bits;
    a.checked_shr(shift).unwrap_or(0) == b.checked_shr(shift).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_plain_urls() {
        let u = url("http://Example.COM/hw/");
        assert_eq!(u.scheme, Scheme::Http);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("example.com", 80, "/hw")
        );
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (None, None));
        assert_eq!(u.host_header(), "example.com");
        assert_eq!(u.authority(), "example.com:80");

        let u = url("HTTPS://10.1.2.3:8443");
        assert_eq!(
            (u.scheme, u.port, u.path.as_str()),
            (Scheme::Https, 8443, "/")
        );
        assert_eq!(u.host_header(), "10.1.2.3:8443");
        let u = url("https://h//");
        assert_eq!((u.port, u.path.as_str()), (443, "/"));
        assert_eq!(url("https://h:443/").host_header(), "h");
        assert_eq!(url("http://h:65535/a/b//").path, "/a/b");
        assert_eq!(url("http://h/a%20b/c;v=1").path, "/a%20b/c;v=1");
        assert_eq!(url("http://my_host.local.:1").host, "my_host.local.");
    }

    #[test]
    fn parses_ipv6() {
        let u = url("http://[2001:DB8::1]:8080/x");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 8080));
        assert_eq!(u.host_header(), "[2001:db8::1]:8080");
        assert_eq!(u.authority(), "[2001:db8::1]:8080");
        let u = url("https://[::1]");
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        assert_eq!(u.host_header(), "[::1]");
        assert_eq!(u.authority(), "[::1]:443");
        assert_eq!(url("http://[::ffff:10.0.0.1]/").host, "::ffff:10.0.0.1");
    }

    #[test]
    fn parses_userinfo() {
        let u = url("http://us%40er:p%3Ass:w@proxy:3128");
        assert_eq!(u.username.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:ss:w"));
        assert_eq!((u.host.as_str(), u.port), ("proxy", 3128));
        let u = url("http://user@proxy");
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("user"), None)
        );
        let u = url("http://a@b:c@proxy");
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some("a@b"), Some("c"))
        );
        let u = url("http://:@proxy");
        assert_eq!(
            (u.username.as_deref(), u.password.as_deref()),
            (Some(""), Some(""))
        );
        let u = url("http://%C3%A9t%C3%A9:x@proxy");
        assert_eq!(u.username.as_deref(), Some("\u{e9}t\u{e9}"));
        let debug = format!("{:?}", url("http://u:secret@h"));
        assert!(!debug.contains("secret"), "{debug}");
    }

    #[test]
    fn rejects_bad_urls() {
        use UrlError::*;
        let cases = [
            ("example.com", MissingScheme),
            ("", MissingScheme),
            ("ftp://h/", UnsupportedScheme),
            ("socks5://h", UnsupportedScheme),
            ("http://h /x", InvalidCharacter),
            ("http://h/\t", InvalidCharacter),
            ("http://h/\u{e9}", InvalidCharacter),
            ("http://h\r\n/", InvalidCharacter),
            ("http://", EmptyHost),
            ("http:///x", EmptyHost),
            ("http://:80", EmptyHost),
            ("http://u:p@/", EmptyHost),
            ("http://[]/", EmptyHost),
            ("http://h:0", InvalidPort),
            ("http://h:65536", InvalidPort),
            ("http://h:99999999999999999999", InvalidPort),
            ("http://h:", InvalidPort),
            ("http://h:-1", InvalidPort),
            ("http://h:8a", InvalidPort),
            ("http://[::1]:0", InvalidPort),
            ("http://::1/", InvalidHost),
            ("http://[::1/", InvalidHost),
            ("http://[::g]/", InvalidHost),
            ("http://[::1]x/", InvalidHost),
            ("http://[fe80::1%25eth0]/", InvalidHost),
            ("http://h\"x/", InvalidHost),
            ("http://h/?q=1", QueryOrFragment),
            ("http://h/#f", QueryOrFragment),
            ("http://h?", QueryOrFragment),
            ("http://u%zz@h", InvalidPercentEncoding),
            ("http://u%c3@h", InvalidPercentEncoding),
            ("http://h/%2", InvalidPercentEncoding),
            ("http://h/a\\b", InvalidPath),
            ("http://h/<x>", InvalidPath),
        ];
        for (input, expected) in cases {
            assert_eq!(Url::parse(input), Err(expected), "{input:?}");
            assert!(!expected.to_string().is_empty());
        }
    }

    #[test]
    fn session_paths() {
        let hex = "0123456789abcdef0123456789abcdef";
        assert_eq!(url("http://h").session_path(hex), format!("/{hex}"));
        assert_eq!(url("http://h/").session_path(hex), format!("/{hex}"));
        assert_eq!(url("http://h/hw/").session_path(hex), format!("/hw/{hex}"));
        assert_eq!(url("http://h/a/b").session_path(hex), format!("/a/b/{hex}"));
    }

    #[test]
    fn proxy_selection_by_scheme() {
        let http = url("http://example.com/");
        let https = url("https://example.com/");
        let p = proxy_for(&http, Some("proxy:3128"), Some("http://other:8080"), None).unwrap();
        let p = p.unwrap();
        assert_eq!(
            (p.scheme, p.host.as_str(), p.port),
            (Scheme::Http, "proxy", 3128)
        );
        let p = proxy_for(&https, Some("proxy:3128"), Some("http://other:8080"), None).unwrap();
        assert_eq!(p.unwrap().host, "other");
        assert_eq!(proxy_for(&https, Some("proxy:3128"), None, None), Ok(None));
        assert_eq!(proxy_for(&http, None, Some("proxy:3128"), None), Ok(None));
        assert_eq!(proxy_for(&http, Some("  "), None, None), Ok(None));
        let p = proxy_for(&http, Some(" http://u:p%40ss@proxy/ "), None, None)
            .unwrap()
            .unwrap();
        assert_eq!((p.port, p.password.as_deref()), (80, Some("p@ss")));
        assert_eq!(
            proxy_for(&http, Some("socks5://proxy:1080"), None, None),
            Err(UrlError::UnsupportedScheme)
        );
        assert_eq!(
            proxy_for(&http, Some("proxy:0"), None, None),
            Err(UrlError::InvalidPort)
        );
        // A bad proxy value does not matter when no_proxy excludes the target.
        assert_eq!(proxy_for(&http, Some("proxy:0"), None, Some("*")), Ok(None));
    }

    #[test]
    fn no_proxy_table() {
        // (target, no_proxy, bypasses the proxy)
        let cases: &[(&str, &str, bool)] = &[
            ("http://example.com", "", false),
            ("http://example.com", "*", true),
            ("http://example.com", " * ", true),
            ("http://example.com", "foo.org, *", true),
            ("http://example.com", "example.com", true),
            ("http://www.example.com", "example.com", true),
            ("http://a.b.example.com", "example.com", true),
            ("http://myexample.com", "example.com", false),
            ("http://example.com", ".example.com", true),
            ("http://www.example.com", ".example.com", true),
            ("http://example.com.", "example.com", true),
            ("http://example.com", "example.com.", true),
            ("http://WWW.Example.Com", "EXAMPLE.com", true),
            ("http://example.com", "www.example.com", false),
            ("http://example.com", "com", true),
            ("http://example.com", "le.com", false),
            ("http://example.com", "foo.org,  example.com ,bar", true),
            ("http://example.com", "foo.org example.com", true),
            ("http://example.com", "foo.org,,", false),
            ("http://example.com", ".", false),
            ("http://example.com:8080", "example.com:8080", true),
            ("http://example.com:8080", "example.com:9090", false),
            ("http://example.com", "example.com:80", true),
            ("http://example.com", "example.com:bad", false),
            ("http://localhost:3000", "localhost", true),
            ("http://10.1.2.3", "10.0.0.0/8", true),
            ("http://11.1.2.3", "10.0.0.0/8", false),
            ("http://10.1.2.3", "10.1.2.3", true),
            ("http://10.1.2.3", "10.1.2.4", false),
            ("http://10.1.2.3", "10.1.2.3/32", true),
            ("http://10.1.2.3", "10.1.2.0/24", true),
            ("http://10.1.3.3", "10.1.2.0/24", false),
            ("http://10.1.2.3", "0.0.0.0/0", true),
            ("http://10.1.2.3", "10.0.0.0/33", false),
            ("http://10.1.2.3", "10.0.0.0/x", false),
            ("http://10.1.2.3", "2.3", false),
            ("http://10.1.2.3:8080", "10.1.2.3:8080", true),
            ("http://10.1.2.3:8080", "10.1.2.3:80", false),
            ("http://10.1.2.3", "::/0", false),
            ("http://127.0.0.1", "localhost", false),
            ("http://[::1]", "::1", true),
            ("http://[::1]", "::1/128", true),
            ("http://[::1]", "[::1]", true),
            ("http://[::1]:8080", "[::1]:8080", true),
            ("http://[::1]:8080", "[::1]:9090", false),
            ("http://[::2]", "::1", false),
            ("http://[2001:db8::5]", "2001:db8::/32", true),
            ("http://[2001:db9::5]", "2001:db8::/32", false),
            ("http://[2001:db8::5]", "::/0", true),
            ("http://[2001:db8::5]", "10.0.0.0/8", false),
            ("http://[0:0:0:0:0:0:0:1]", "::1", true),
        ];
        for (target, no_proxy, bypass) in cases {
            let target = url(target);
            let result = proxy_for(
                &target,
                Some("proxy:3128"),
                Some("proxy:3128"),
                Some(no_proxy),
            );
            let direct = result.unwrap().is_none();
            assert_eq!(direct, *bypass, "{target:?} with no_proxy={no_proxy:?}");
        }
    }
}
