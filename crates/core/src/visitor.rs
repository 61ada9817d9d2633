//! The cookieless visitor id: a keyed hash of a daily secret salt, the client IP and
//! the User-Agent, shaped as a UUID. The salt is random, kept in the store (so every
//! instance and a restart agree during the day), and deleted once its day is over,
//! after which no id can be traced back to an IP. Nothing personal is stored.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::domain::VisitorId;

/// The id of the visitor at `ip` with `user_agent`, under the day's `salt`.
pub fn cookieless_id(salt: &[u8], ip: IpAddr, user_agent: &str) -> VisitorId {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt).expect("HMAC takes keys of any length");
    match ip {
        IpAddr::V4(v4) => mac.update(&v4.octets()),
        IpAddr::V6(v6) => mac.update(&v6.octets()),
    }
    mac.update(&[0]);
    mac.update(user_agent.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // Version 8 ("custom") and the RFC variant: a valid UUID that says it is derived.
    VisitorId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_for_a_salt_and_different_across_salts() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let a = cookieless_id(b"salt-1", ip, "Firefox");
        assert_eq!(a, cookieless_id(b"salt-1", ip, "Firefox"));
        assert_ne!(a, cookieless_id(b"salt-2", ip, "Firefox"));
        assert_ne!(a, cookieless_id(b"salt-1", ip, "Chrome"));
        assert_eq!(a.as_uuid().get_version_num(), 8);
    }
}
