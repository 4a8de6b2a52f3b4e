//! Who a peer is: the role and name its certificate carries (`tls.rs` reads them,
//! `auth.rs` decides what each role may do; `docs/security.md`).

/// What a certificate allows its holder (`docs/security.md`, "Identities and roles").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A pool: pool-to-pool transfers, migration requests, and the admin commands a pool sends
    /// other pools (`rebalance`).
    Pool,
    /// An operator: admin commands.
    Admin,
    /// A client: `put` and `get` only.
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Pool, Role::Admin, Role::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pool => "pool",
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role '{s}': expected pool, admin or client"))
    }
}

/// Who a peer is, as its certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().unwrap_err().contains("pool, admin or client"));
        assert_eq!(Identity { role: Role::Admin, name: "alice".into() }.to_string(), "admin:alice");
    }
}
