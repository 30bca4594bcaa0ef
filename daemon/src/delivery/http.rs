//! Delivery step, on the wire: one HTTP client per plugin (connection reuse, HTTP/1.1 and 2,
//! rustls with the system's roots) behind the plugin's egress policy. The only module that
//! imports the HTTP client crate and rustls.
//!
//! Egress: a request goes only to a host in the plugin's allowlist; the addresses a name
//! resolves to are checked too (a listed name that resolves to loopback, a private network,
//! link-local or a cloud metadata address is refused unless that address is itself listed),
//! so DNS cannot turn an allowed host into an internal one; redirects are never followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// What a provider answered, as much as retries and receipts need.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    /// `Retry-After`, in seconds or as an HTTP date, already turned into a wait.
    pub retry_after: Option<Duration>,
    /// The start of the body (provider error codes and message ids live there).
    pub body: Vec<u8>,
}

/// Why a request was not sent, or got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The egress policy refused it: never retried.
    #[error("egress refused: {0}")]
    Refused(String),
    /// No connection, a timeout, a reset: the provider may not have seen it; retried.
    #[error("{0}")]
    Transport(String),
}

/// The most of an answer's body kept (error texts and ids are short).
const BODY_KEPT: usize = 8 * 1024;

/// One plugin's client: its allowlist and the connections it keeps.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    allowed: Arc<Allowed>,
    connect_timeout: Duration,
}

#[derive(Debug)]
struct Allowed {
    /// `host` or `host:port`, lowercase.
    hosts: Vec<String>,
    /// Addresses listed as such: the only special addresses the plugin may reach.
    addresses: Vec<IpAddr>,
}

impl Allowed {
    fn permits(&self, host: &str, port: u16, default_port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.hosts.iter().any(|entry| {
            let (name, entry_port) = split_host_port(entry);
            name.eq_ignore_ascii_case(host)
                && entry_port.is_none_or(|entry_port| entry_port == port)
                && (entry_port.is_some() || port == default_port)
        })
    }

    fn address_allowed(&self, ip: IpAddr) -> bool {
        !special(ip) || self.addresses.contains(&ip)
    }
}

/// `host` and its port from `host:port` (IPv6 in brackets).
fn split_host_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (
            host,
            after.strip_prefix(':').and_then(|port| port.parse().ok()),
        );
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (entry, None),
    }
}

/// Addresses a provider API never has: loopback, private networks, link-local (cloud
/// metadata services live at 169.254.169.254 and fd00:ec2::254), carrier-grade NAT,
/// unspecified, multicast and broadcast, documentation ranges, IPv4-mapped forms of those.
fn special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return special(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Resolves names, then keeps only the addresses the plugin may reach.
#[derive(Debug)]
struct CheckedResolver {
    allowed: Arc<Allowed>,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allowed = self.allowed.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses: Addrs =
                Box::new(permitted_addresses(&allowed, &host, 0).await?.into_iter());
            Ok(addresses)
        })
    }
}

/// `host`'s addresses the plugin may reach (with `port`); an error naming them all when none.
async fn permitted_addresses(
    allowed: &Allowed,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let permitted: Vec<SocketAddr> = resolved
        .iter()
        .copied()
        .filter(|address| allowed.address_allowed(address.ip()))
        .collect();
    if permitted.is_empty() {
        return Err(format!(
            "egress refused: {host} resolves only to addresses the plugin may not reach ({}); list the address in allowed_hosts to allow it",
            resolved
                .iter()
                .map(|address| address.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
        .into());
    }
    Ok(permitted)
}

/// Connection settings shared by every plugin's client.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub total: Duration,
}

impl Client {
    /// A client for one plugin whose requests may reach `hosts` (`host` or `host:port`);
    /// special addresses among them are reachable only when the operator listed them
    /// (`explicit`), not when they come from the plugin's own URL settings.
    pub fn new(hosts: &[String], explicit: bool, timeouts: Timeouts) -> Result<Self, String> {
        // reqwest is built without a crypto provider of its own: rustls uses ring, as the
        // broker connection does. A second call finds it installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let addresses = hosts
            .iter()
            .filter(|_| explicit)
            .filter_map(|entry| {
                let (host, _) = split_host_port(entry);
                host.parse::<IpAddr>().ok()
            })
            .collect();
        let allowed = Arc::new(Allowed {
            hosts: hosts.to_vec(),
            addresses,
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeouts.connect)
            .timeout(timeouts.total)
            .pool_idle_timeout(Duration::from_secs(90))
            .dns_resolver(Arc::new(CheckedResolver {
                allowed: allowed.clone(),
            }))
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
        Ok(Self {
            http,
            allowed,
            connect_timeout: timeouts.connect,
        })
    }

    /// The egress check alone (also before credentials are filled in: a request the policy
    /// refuses never waits for a secret).
    pub fn check(&self, url: &str) -> Result<(), SendError> {
        self.checked_url(url).map(drop)
    }

    fn checked_url(&self, url: &str) -> Result<reqwest::Url, SendError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|error| SendError::Refused(format!("not a URL ({error})")))?;
        let scheme = parsed.scheme();
        if scheme != "https" && scheme != "http" {
            return Err(SendError::Refused(format!(
                "scheme {scheme} is not http(s)"
            )));
        }
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = parsed.port().unwrap_or(default_port);
        if !self.allowed.permits(&host, port, default_port) {
            return Err(SendError::Refused(format!(
                "{host}:{port} is not in the plugin's allowed_hosts"
            )));
        }
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            && !self.allowed.address_allowed(ip)
        {
            return Err(SendError::Refused(format!(
                "{ip} is a loopback, private, link-local or metadata address; list it in allowed_hosts to allow it"
            )));
        }
        Ok(parsed)
    }

    /// A TCP connection for a long-lived exchange with an allowed host (the ARI events
    /// WebSocket): `url` (http or https) checked as a request's, its name resolved and only
    /// permitted addresses tried, within the connect timeout.
    pub async fn connect(&self, url: &str) -> Result<tokio::net::TcpStream, SendError> {
        let parsed = self.checked_url(url)?;
        let host = parsed.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addresses = permitted_addresses(&self.allowed, host, port)
            .await
            .map_err(|error| SendError::Refused(error.to_string()))?;
        let mut last = String::from("no address");
        for address in addresses {
            match tokio::time::timeout(
                self.connect_timeout,
                tokio::net::TcpStream::connect(address),
            )
            .await
            {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last = error.to_string(),
                Err(_) => last = format!("no connection within {:?}", self.connect_timeout),
            }
        }
        Err(SendError::Transport(last))
    }

    /// Sends one request (credentials already filled in) after the egress check.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Answer, SendError> {
        let parsed = self.checked_url(url)?;
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| SendError::Refused(format!("{method:?} is not an HTTP method")))?;
        let mut request = self.http.request(method, parsed).body(body);
        for (name, value) in headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request.send().await.map_err(|error| {
            // The URL may carry a credential (a bot token in the path): never in an error.
            let text = error_chain(&error.without_url());
            if text.contains("egress refused") {
                SendError::Refused(text)
            } else {
                SendError::Transport(text)
            }
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        let mut response = response;
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = BODY_KEPT.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        Ok(Answer {
            status,
            content_type,
            retry_after,
            body,
        })
    }
}

/// An error and its causes on one line (reqwest's own `Display` stops at the outermost).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as seconds, or as an HTTP date relative to now.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(seconds) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate(value.trim())?;
    let now = std::time::SystemTime::now();
    Some(at.duration_since(now).unwrap_or_default())
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 says senders use.
fn httpdate(text: &str) -> Option<std::time::SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: u64 = day.parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|name| name == month)? as u64
        + 1;
    let year: i64 = year.parse().ok()?;
    let mut clock = time.split(':').map(|part| part.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    // Days since the epoch (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m as i64 + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(
        std::time::UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + hour * 3600 + minute * 60 + second),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_private_and_loopback_addresses_are_special() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(special(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "157.240.22.35",
            "54.172.60.0",
            "2a03:2880:f10c:83:face:b00c:0:25de",
        ] {
            assert!(!special(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn hosts_match_with_or_without_a_port() {
        let allowed = Allowed {
            hosts: vec!["graph.facebook.com".into(), "127.0.0.1:9000".into()],
            addresses: vec!["127.0.0.1".parse().unwrap()],
        };
        assert!(allowed.permits("graph.facebook.com", 443, 443));
        assert!(allowed.permits("GRAPH.facebook.com", 443, 443));
        assert!(!allowed.permits("graph.facebook.com", 8443, 443));
        assert!(allowed.permits("127.0.0.1", 9000, 80));
        assert!(!allowed.permits("127.0.0.1", 9001, 80));
        assert!(!allowed.permits("evil.example", 443, 443));
        assert!(allowed.address_allowed("127.0.0.1".parse().unwrap()));
        assert!(!allowed.address_allowed("169.254.169.254".parse().unwrap()));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            httpdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(std::time::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
