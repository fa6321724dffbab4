//! Connection options shared by every driver: where the server is, which proxy to use, the
//! direct-TCP-first fallback, and the protocol knobs. Pure: the caller passes in what it read
//! from the environment.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;

use crate::config::ClientConfig;
use crate::http;
use crate::url::{self, Url, UrlError};

/// How a client reaches its server.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The server endpoint, `http://host:port/path` or `https://...`.
    pub server: Url,
    /// The forward proxy, if any.
    pub proxy: Option<Url>,
    /// A raw TCP address (`host:port`) tried first, within `direct_timeout`; on failure the
    /// client falls back to HTTP.
    pub direct: Option<String>,
    /// How long the direct TCP attempt may take (default 1.5 s: a TCP handshake plus the
    /// direct hello is two round trips, well under that even across continents, and a
    /// firewall that drops the SYN then costs the fallback 1.5 s, not more).
    pub direct_timeout: Duration,
    /// How long one HTTP connection attempt (to the server or proxy) may take.
    pub connect_timeout: Duration,
    /// Ask for a fresh connection per request (`Connection: close`), for HTTP/1.0 proxies.
    pub close_each_request: bool,
    /// Protocol knobs.
    pub protocol: ClientConfig,
}

/// A bad option value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionsError {
    /// The server URL is invalid.
    ServerUrl(UrlError),
    /// The proxy URL is invalid.
    ProxyUrl(UrlError),
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionsError::ServerUrl(e) => write!(f, "invalid server URL: {e}"),
            OptionsError::ProxyUrl(e) => write!(f, "invalid proxy URL: {e}"),
        }
    }
}

impl core::error::Error for OptionsError {}

impl ClientOptions {
    /// Options for `server` with no proxy, no direct address and default knobs.
    pub fn new(server: &str) -> Result<Self, OptionsError> {
        Ok(ClientOptions {
            server: Url::parse(server).map_err(OptionsError::ServerUrl)?,
            proxy: None,
            direct: None,
            direct_timeout: Duration::from_millis(1500),
            connect_timeout: Duration::from_secs(10),
            close_each_request: false,
            protocol: ClientConfig::default(),
        })
    }

    /// Uses `proxy` (`http://[user:pass@]host:port`).
    pub fn proxy(mut self, proxy: &str) -> Result<Self, OptionsError> {
        self.proxy = Some(Url::parse(proxy).map_err(OptionsError::ProxyUrl)?);
        Ok(self)
    }

    /// Chooses the proxy from the environment, as curl does: `http_proxy`/`HTTP_PROXY` for
    /// http servers, `https_proxy`/`HTTPS_PROXY` for https servers, `all_proxy`/`ALL_PROXY`
    /// for either when its own is unset, and `no_proxy`/`NO_PROXY`. Unlike curl, an https
    /// server with none of those set uses `http_proxy`/`HTTP_PROXY`: behind a firewall that
    /// only lets the proxy out, a direct connection would fail anyway. `get` reads one variable
    /// (e.g. `|k| std::env::var(k).ok()`); lowercase wins; empty values count as unset.
    pub fn proxy_from_env(
        mut self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, OptionsError> {
        let var = |lower: &str, upper: &str| {
            get(lower)
                .filter(|v| !v.is_empty())
                .or_else(|| get(upper).filter(|v| !v.is_empty()))
        };
        let all = var("all_proxy", "ALL_PROXY");
        let http_only = var("http_proxy", "HTTP_PROXY");
        let http = http_only.clone().or_else(|| all.clone());
        let https = var("https_proxy", "HTTPS_PROXY").or(all).or(http_only);
        let no = var("no_proxy", "NO_PROXY");
        self.proxy = url::proxy_for(
            &self.server,
            http.as_deref(),
            https.as_deref(),
            no.as_deref(),
        )
        .map_err(OptionsError::ProxyUrl)?;
        Ok(self)
    }

    /// Tries raw TCP to `addr` first.
    pub fn direct(mut self, addr: &str) -> Self {
        self.direct = Some(String::from(addr));
        self
    }

    /// The address (`host:port`) the driver opens HTTP connections to: the proxy's if there
    /// is one, else the server's.
    pub fn http_connect_authority(&self) -> String {
        self.proxy.as_ref().unwrap_or(&self.server).authority()
    }

    /// Whether HTTP connections go through a proxy's CONNECT tunnel (https through a proxy).
    pub fn uses_connect_tunnel(&self) -> bool {
        self.proxy.is_some() && self.server.scheme == url::Scheme::Https
    }

    /// The `CONNECT` request that opens the proxy's tunnel to the server, when HTTP
    /// connections go through one ([`uses_connect_tunnel`](Self::uses_connect_tunnel)):
    /// the server's `host:port`, with the proxy's basic credentials if its URL has them.
    /// Read the answer with [`crate::http::ConnectResponseParser`]. Requests inside the
    /// tunnel stay in origin form without proxy credentials (see [`crate::Endpoint::new`]).
    pub fn connect_tunnel_head(&self) -> Option<Vec<u8>> {
        if !self.uses_connect_tunnel() {
            return None;
        }
        let proxy = self.proxy.as_ref()?;
        let auth = proxy
            .username
            .as_deref()
            .map(|u| http::basic_auth_value(u, proxy.password.as_deref().unwrap_or("")));
        let mut head = Vec::new();
        http::encode_connect_head(&mut head, &self.server.authority(), auth.as_deref());
        Some(head)
    }

    /// The request-addressing part for a session, for [`crate::Client::new`].
    pub fn endpoint(&self, session: crate::SessionId) -> crate::Endpoint {
        let mut endpoint = crate::Endpoint::new(&self.server, session, self.proxy.as_ref());
        endpoint.close_each = self.close_each_request;
        endpoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_from_env_follows_curl() {
        let env = |k: &str| match k {
            "http_proxy" => Some(String::from("http://u:p@proxy.example:3128")),
            "NO_PROXY" => Some(String::from("localhost,.internal")),
            _ => None,
        };
        let o = ClientOptions::new("http://server.example:8080/t")
            .unwrap()
            .proxy_from_env(env)
            .unwrap();
        assert_eq!(o.proxy.as_ref().unwrap().authority(), "proxy.example:3128");
        assert_eq!(o.http_connect_authority(), "proxy.example:3128");
        let o = ClientOptions::new("http://db.internal/t")
            .unwrap()
            .proxy_from_env(env)
            .unwrap();
        assert!(o.proxy.is_none());
        assert_eq!(o.http_connect_authority(), "db.internal:80");
        assert!(ClientOptions::new("ftp://x").is_err());
    }

    #[test]
    fn proxy_from_env_precedence() {
        let proxy_of = |server: &str, vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            ClientOptions::new(server)
                .unwrap()
                .proxy_from_env(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
                .unwrap()
                .proxy
                .map(|p| p.authority())
        };
        let all = [
            ("HTTP_PROXY", "http://h:1"),
            ("HTTPS_PROXY", "http://s:2"),
            ("ALL_PROXY", "http://a:3"),
        ];
        assert_eq!(proxy_of("http://x/", &all).as_deref(), Some("h:1"));
        assert_eq!(proxy_of("https://x/", &all).as_deref(), Some("s:2"));
        // ALL_PROXY fills in for either scheme's own variable.
        assert_eq!(proxy_of("https://x/", &all[..1]).as_deref(), Some("h:1"));
        assert_eq!(proxy_of("https://x/", &all[2..]).as_deref(), Some("a:3"));
        assert_eq!(proxy_of("http://x/", &all[1..]).as_deref(), Some("a:3"));
        // An http server never uses HTTPS_PROXY; empty values are unset; lowercase wins.
        assert_eq!(proxy_of("http://x/", &all[1..2]), None);
        assert_eq!(proxy_of("http://x/", &[("http_proxy", "")]), None);
        assert_eq!(
            proxy_of(
                "http://x/",
                &[("http_proxy", "http://l:4"), ("HTTP_PROXY", "http://h:1")]
            )
            .as_deref(),
            Some("l:4")
        );
        // NO_PROXY applies whatever variable chose the proxy.
        let no = [("ALL_PROXY", "http://a:3"), ("no_proxy", "x")];
        assert_eq!(proxy_of("https://x/", &no), None);
    }

    /// The first request a session sends, as text.
    fn first_request(options: &ClientOptions) -> String {
        let session = crate::SessionId([7; 16]);
        let mut client = crate::Client::new(
            options.protocol.clone(),
            options.endpoint(session),
            session,
            [1; 16],
            crate::Instant::ZERO,
        );
        let mut buf = Vec::new();
        let t = client
            .poll_transmit(crate::Instant::ZERO, &mut buf)
            .expect("an opening request");
        String::from_utf8_lossy(&buf[..t.len]).into_owned()
    }

    #[test]
    fn https_through_a_proxy_tunnels_with_origin_form_requests() {
        let o = ClientOptions::new("https://server.example:8443/hw")
            .unwrap()
            .proxy("http://user:pass@proxy.example:3128")
            .unwrap();
        assert!(o.uses_connect_tunnel());
        assert_eq!(o.http_connect_authority(), "proxy.example:3128");
        let connect = o.connect_tunnel_head().unwrap();
        assert_eq!(
            core::str::from_utf8(&connect).unwrap(),
            "CONNECT server.example:8443 HTTP/1.1\r\n\
             Host: server.example:8443\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             \r\n"
        );
        // Inside the tunnel: origin form, the server's Host, no proxy credentials.
        let request = first_request(&o);
        assert!(
            request.starts_with("POST /hw/07070707070707070707070707070707 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("\r\nHost: server.example:8443\r\n"));
        assert!(!request.contains("Proxy-"), "{request}");

        // Plain http through the same proxy: absolute form with the credentials, no tunnel.
        let o = ClientOptions::new("http://server.example:8080/hw")
            .unwrap()
            .proxy("http://user:pass@proxy.example:3128")
            .unwrap();
        assert!(!o.uses_connect_tunnel());
        assert!(o.connect_tunnel_head().is_none());
        let request = first_request(&o);
        assert!(request.starts_with("POST http://server.example:8080/hw/07"));
        assert!(request.contains("Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"));

        // https without a proxy: no tunnel, IPv6 authority bracketed when there is one.
        let o = ClientOptions::new("https://[::1]:9443/").unwrap();
        assert!(o.connect_tunnel_head().is_none());
        let o = o.proxy("http://proxy.example:3128").unwrap();
        assert_eq!(
            o.connect_tunnel_head().unwrap(),
            b"CONNECT [::1]:9443 HTTP/1.1\r\nHost: [::1]:9443\r\n\r\n"
        );
    }
}
