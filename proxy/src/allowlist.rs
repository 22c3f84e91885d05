//! Per-database client address allowlists: CIDRs parsed and normalised once, where control
//! takes them in, and matched on every login by the proxy. An empty list allows any address.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// Most CIDRs one database may list: enough for any real set of networks, few enough that
/// matching stays a short scan.
pub const MAX_CIDRS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowListError {
    #[error(
        "invalid CIDR {0:?}: expected an address or address/prefix, such as 203.0.113.0/24, \
         198.51.100.7 or 2001:db8::/32"
    )]
    Invalid(String),
    #[error("too many CIDRs ({0}): at most {MAX_CIDRS}")]
    TooMany(usize),
}

/// The networks a database's clients may connect from, normalised: no host bits, IPv4 as
/// IPv4 (also when written IPv4-mapped), no duplicates. Empty means any address.
/// On the wire (the API, routes sent to proxies) a list of strings, parsed again on the way
/// in, so a list from anywhere is normalised and capped like one a user typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct AllowList(Vec<IpNet>);

impl TryFrom<Vec<String>> for AllowList {
    type Error = AllowListError;
    fn try_from(entries: Vec<String>) -> Result<Self, Self::Error> {
        Self::parse(&entries)
    }
}

impl From<AllowList> for Vec<String> {
    fn from(list: AllowList) -> Self {
        list.0.iter().map(ToString::to_string).collect()
    }
}

impl AllowList {
    /// Parses CIDRs (a bare address is a single host). The whole list is refused, naming the
    /// first bad entry, if one does not parse.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowListError> {
        if entries.len() > MAX_CIDRS {
            return Err(AllowListError::TooMany(entries.len()));
        }
        let mut nets: Vec<IpNet> = Vec::with_capacity(entries.len());
        for entry in entries {
            let net = parse_one(entry.as_ref())?;
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        Ok(Self(nets))
    }

    /// Whether a client at `ip` may connect.
    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return true;
        }
        // A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6 addresses.
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn entries(&self) -> &[IpNet] {
        &self.0
    }
}

impl fmt::Display for AllowList {
    /// Comma-separated, the form the store keeps.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn parse_one(entry: &str) -> Result<IpNet, AllowListError> {
    let text = entry.trim();
    let invalid = || AllowListError::Invalid(entry.to_owned());
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(text.parse::<IpAddr>().map_err(|_| invalid())?),
    };
    // `::ffff:a.b.c.d/n` (n >= 96) is an IPv4 network written as IPv6: keep it as IPv4, the
    // form a client's address is matched in.
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|_| invalid())?),
            None => net,
        },
        other => other,
    };
    Ok(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(entries).expect("valid list")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn an_empty_list_permits_any_address() {
        let any = AllowList::default();
        assert!(any.permits(ip("203.0.113.9")));
        assert!(any.permits(ip("2001:db8::1")));
    }

    #[test]
    fn addresses_inside_a_network_are_permitted_and_others_not() {
        let l = list(&["127.0.0.2/32", "10.0.0.0/8", "2001:db8::/32"]);
        assert!(l.permits(ip("127.0.0.2")));
        assert!(!l.permits(ip("127.0.0.3")));
        assert!(l.permits(ip("10.200.1.1")));
        assert!(!l.permits(ip("11.0.0.1")));
        assert!(l.permits(ip("2001:db8:ffff::1")));
        assert!(!l.permits(ip("2001:db9::1")));
    }

    #[test]
    fn an_ipv4_client_seen_as_ipv4_mapped_ipv6_matches_ipv4_networks() {
        let l = list(&["192.0.2.0/24"]);
        assert!(l.permits(ip("::ffff:192.0.2.44")));
        assert!(!l.permits(ip("::ffff:192.0.3.44")));
        // The reverse: a network written IPv4-mapped is kept as IPv4 and matches both forms.
        let mapped = list(&["::ffff:198.51.100.0/120"]);
        assert_eq!(mapped, list(&["198.51.100.0/24"]));
        assert!(mapped.permits(ip("198.51.100.7")));
        assert!(mapped.permits(ip("::ffff:198.51.100.7")));
        assert!(!mapped.permits(ip("198.51.101.7")));
    }

    #[test]
    fn entries_are_normalised() {
        let l = list(&[" 10.1.2.3/8", "10.0.0.0/8", "198.51.100.7", "2001:db8::1"]);
        let shown: Vec<String> = l.entries().iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "198.51.100.7/32", "2001:db8::1/128"]);
        assert_eq!(l.to_string(), "10.0.0.0/8,198.51.100.7/32,2001:db8::1/128");
    }

    #[test]
    fn a_bad_entry_is_refused_by_name() {
        for bad in ["", "10.0.0.0/33", "2001:db8::/129", "10.0.0", "example.com", "10.0.0.0/8,"] {
            assert_eq!(AllowList::parse(&[bad]), Err(AllowListError::Invalid(bad.into())), "{bad}");
        }
        let e = AllowList::parse(&["10.0.0.0/8", "nope"]).expect_err("refused");
        assert!(e.to_string().contains("\"nope\""), "{e}");
    }

    #[test]
    fn the_list_is_capped() {
        let many: Vec<String> = (0..=MAX_CIDRS).map(|i| format!("10.0.{i}.0/24")).collect();
        assert_eq!(AllowList::parse(&many), Err(AllowListError::TooMany(MAX_CIDRS + 1)));
        assert!(AllowList::parse(&many[..MAX_CIDRS]).is_ok());
    }

    #[test]
    fn it_travels_as_a_list_of_strings() -> Result<(), serde_json::Error> {
        let l = list(&["10.0.0.0/8", "::1"]);
        let json = serde_json::to_string(&l)?;
        assert_eq!(json, r#"["10.0.0.0/8","::1/128"]"#);
        assert_eq!(serde_json::from_str::<AllowList>(&json)?, l);
        let mapped = serde_json::from_str::<AllowList>(r#"["::ffff:10.0.0.0/104"]"#)?;
        assert_eq!(mapped, list(&["10.0.0.0/8"]), "normalised on the way in too");
        assert!(serde_json::from_str::<AllowList>(r#"["10.0.0.0/33"]"#).is_err());
        Ok(())
    }
}
