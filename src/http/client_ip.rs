//! The client's IP address, decided in one place: the socket's peer, or, when the
//! peer is one of `--trusted-proxies`, the address that proxy saw, from
//! `X-Forwarded-For`. The per-IP limits and the cookieless visitor id both use it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

use super::AppState;
use crate::config::Networks;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The client IP of a request (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        // Served without connect info (an embedding that forgot
        // `into_make_service_with_connect_info`): every client looks the same, which
        // errs on the side of limiting.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(Self(resolve(
            peer,
            &parts.headers,
            &st.security.trusted_proxies,
        )))
    }
}

/// The client IP for a request from `peer` with `headers`.
///
/// Each proxy appends the address it received the request from, so the list is read
/// right to left, skipping our own proxies: the first address that is not one of them
/// is the client. Anything further left was written by the client itself and could
/// be forged, so it is never believed. A malformed entry stops the walk at the last
/// address that could be trusted.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &Networks) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(&peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_entry(entry) else {
            return client;
        };
        client = ip;
        if !trusted.contains(&ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(raw: &[&str]) -> Networks {
        Networks(raw.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            resolve(ip("198.51.100.1"), &h, &nets(&[])),
            ip("198.51.100.1")
        );
        assert_eq!(
            resolve(ip("198.51.100.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn a_trusted_proxy_is_believed_for_the_address_it_saw() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged the first entry; the proxy appended the real address.
        let h = xff(&["1.1.1.1, 203.0.113.9"]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.9"));
        // Two of our proxies in a row, in two headers.
        let h = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.3"]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.9"));
        // Ports and brackets, and an IPv4-mapped peer.
        let h = xff(&["[2001:db8::7]:443"]);
        assert_eq!(
            resolve(ip("::ffff:10.0.0.2"), &h, &trusted),
            ip("2001:db8::7")
        );
        let h = xff(&["203.0.113.9:5000"]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted), ip("203.0.113.9"));
    }

    #[test]
    fn garbage_or_nothing_leaves_the_last_believable_address() {
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("10.0.0.2"), &HeaderMap::new(), &trusted),
            ip("10.0.0.2")
        );
        let h = xff(&["203.0.113.9, not-an-ip"]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted), ip("10.0.0.2"));
        let h = xff(&["garbage, 10.0.0.5"]);
        assert_eq!(resolve(ip("10.0.0.2"), &h, &trusted), ip("10.0.0.5"));
    }
}
