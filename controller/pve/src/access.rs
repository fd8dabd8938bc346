//! Users, roles, API tokens and ACLs, plus the storage and bridge listings: what the
//! setup wizard (`wizard/`) needs to check the operator's Proxmox answers and to create
//! BlockHost's least-privilege, privilege-separated API token.
//!
//! Why not in [`crate::Pve`]: the reconcilers never manage users or tokens (and must
//! not be able to: their own token lacks the privileges), so these stay methods of the
//! HTTP client only, called with an administrator's ticket during setup.

use reqwest::Method;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::client::PveClient;
use crate::de;
use crate::error::Result;

/// A storage as a node sees it (`GET /nodes/{node}/storage`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeStorage {
    /// Storage id (`local-lvm`).
    pub storage: String,
    /// Backend type (`lvmthin`, `dir`, `rbd`, …).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Content types it holds, comma-separated (`images,rootdir`).
    #[serde(default)]
    pub content: String,
    /// Whether it is active on this node.
    #[serde(default, deserialize_with = "de::bool")]
    pub active: bool,
    /// Whether it is enabled in storage.cfg.
    #[serde(default = "yes", deserialize_with = "de::bool")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

impl NodeStorage {
    /// Whether the storage may hold content type `what` (`images`, `import`, …).
    pub fn holds(&self, what: &str) -> bool {
        self.content.split(',').any(|c| c.trim() == what)
    }
}

/// A network interface of a node (`GET /nodes/{node}/network`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeInterface {
    /// Interface name (`vmbr0`).
    pub iface: String,
    /// `bridge`, `OVSBridge`, `eth`, `bond`, …
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Whether it is up.
    #[serde(default, deserialize_with = "de::bool")]
    pub active: bool,
    /// Its IPv4 address with prefix length, if any (`192.0.2.10/24`).
    #[serde(default, deserialize_with = "de::opt_string")]
    pub cidr: Option<String>,
}

impl NodeInterface {
    /// Whether VMs can attach to it.
    pub fn is_bridge(&self) -> bool {
        matches!(self.kind.as_str(), "bridge" | "OVSBridge")
    }
}

/// A role (`GET /access/roles`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Role {
    /// Role id.
    pub roleid: String,
    /// Its privileges, comma-separated.
    #[serde(default, deserialize_with = "de::opt_string")]
    pub privs: Option<String>,
}

impl Role {
    /// The privileges, sorted.
    pub fn privileges(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .privs
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }
}

/// A user (`GET /access/users`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// `name@realm`.
    pub userid: String,
}

/// An API token of a user (`GET /access/users/{userid}/token`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Token {
    /// The token's own id (after the `!`).
    pub tokenid: String,
    /// Whether its privileges are separated from the user's (an ACL must grant them).
    #[serde(default = "yes", deserialize_with = "de::bool")]
    pub privsep: bool,
}

/// A freshly created token. PVE shows the secret only in this answer.
#[derive(Deserialize)]
pub struct NewToken {
    /// `user@realm!tokenid`.
    #[serde(rename = "full-tokenid")]
    pub full_tokenid: String,
    /// The secret (a UUID). Keep it in a 0600 file; never log it.
    pub value: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("full_tokenid", &self.full_tokenid)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// One ACL entry (`GET /access/acl`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AclEntry {
    /// The object path (`/vms`, `/storage/local-lvm`).
    pub path: String,
    /// The role granted.
    pub roleid: String,
    /// `user`, `group` or `token`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The user, group or token id.
    pub ugid: String,
    /// Whether it applies below the path too.
    #[serde(default, deserialize_with = "de::bool")]
    pub propagate: bool,
}

/// Who an ACL entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclSubject<'a> {
    /// A user (`name@realm`).
    User(&'a str),
    /// An API token (`name@realm!id`).
    Token(&'a str),
}

fn p(k: &str, v: impl ToString) -> (String, String) {
    (k.to_owned(), v.to_string())
}

impl PveClient {
    /// Storages of `node` that may hold `content` (all when `None`).
    pub async fn node_storages(
        &self,
        node: &str,
        content: Option<&str>,
    ) -> Result<Vec<NodeStorage>> {
        let query: Vec<(String, String)> = content.map(|c| p("content", c)).into_iter().collect();
        self.call(Method::GET, &["nodes", node, "storage"], &query, None)
            .await
    }

    /// Network interfaces of `node`.
    pub async fn node_interfaces(&self, node: &str) -> Result<Vec<NodeInterface>> {
        self.call(Method::GET, &["nodes", node, "network"], &[], None)
            .await
    }

    /// Every role.
    pub async fn roles(&self) -> Result<Vec<Role>> {
        self.call(Method::GET, &["access", "roles"], &[], None)
            .await
    }

    /// Creates a role with exactly `privs`.
    pub async fn create_role(&self, roleid: &str, privs: &[&str]) -> Result<()> {
        let form = vec![p("roleid", roleid), p("privs", privs.join(","))];
        let _: IgnoredAny = self
            .call(Method::POST, &["access", "roles"], &[], Some(&form))
            .await?;
        Ok(())
    }

    /// Sets a role's privileges to exactly `privs` (not appended).
    pub async fn set_role(&self, roleid: &str, privs: &[&str]) -> Result<()> {
        let form = vec![p("privs", privs.join(","))];
        let _: IgnoredAny = self
            .call(Method::PUT, &["access", "roles", roleid], &[], Some(&form))
            .await?;
        Ok(())
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<User>> {
        self.call(Method::GET, &["access", "users"], &[], None)
            .await
    }

    /// Creates a user without a password (it authenticates only through its tokens).
    pub async fn create_user(&self, userid: &str, comment: &str) -> Result<()> {
        let form = vec![p("userid", userid), p("comment", comment)];
        let _: IgnoredAny = self
            .call(Method::POST, &["access", "users"], &[], Some(&form))
            .await?;
        Ok(())
    }

    /// The API tokens of `userid`.
    pub async fn tokens(&self, userid: &str) -> Result<Vec<Token>> {
        self.call(
            Method::GET,
            &["access", "users", userid, "token"],
            &[],
            None,
        )
        .await
    }

    /// Creates a privilege-separated token (`privsep=1`: it holds only what ACLs grant
    /// the token itself, never the user's full rights).
    pub async fn create_token(
        &self,
        userid: &str,
        tokenid: &str,
        comment: &str,
    ) -> Result<NewToken> {
        self.create_token_with(userid, tokenid, comment, true).await
    }

    /// Creates a token, privilege-separated or not. `privsep = false` gives the
    /// token its user's full rights: only for a short-lived token that is deleted
    /// right after use (the setup wizard's template install).
    pub async fn create_token_with(
        &self,
        userid: &str,
        tokenid: &str,
        comment: &str,
        privsep: bool,
    ) -> Result<NewToken> {
        let form = vec![p("privsep", u8::from(privsep)), p("comment", comment)];
        self.call(
            Method::POST,
            &["access", "users", userid, "token", tokenid],
            &[],
            Some(&form),
        )
        .await
    }

    /// Deletes a token.
    pub async fn delete_token(&self, userid: &str, tokenid: &str) -> Result<()> {
        let _: IgnoredAny = self
            .call(
                Method::DELETE,
                &["access", "users", userid, "token", tokenid],
                &[],
                None,
            )
            .await?;
        Ok(())
    }

    /// Every ACL entry.
    pub async fn acl(&self) -> Result<Vec<AclEntry>> {
        self.call(Method::GET, &["access", "acl"], &[], None).await
    }

    /// Grants `roleid` on `path` to `who`, propagating below it.
    pub async fn grant(&self, path: &str, roleid: &str, who: AclSubject<'_>) -> Result<()> {
        let mut form = vec![p("path", path), p("roles", roleid), p("propagate", 1)];
        form.push(match who {
            AclSubject::User(u) => p("users", u),
            AclSubject::Token(t) => p("tokens", t),
        });
        let _: IgnoredAny = self
            .call(Method::PUT, &["access", "acl"], &[], Some(&form))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loose_pve_json_is_read() {
        let s: NodeStorage = serde_json::from_value(serde_json::json!({
            "storage": "local-lvm", "type": "lvmthin", "content": "rootdir,images", "active": 1
        }))
        .unwrap();
        assert!(s.holds("images") && !s.holds("iso") && s.active && s.enabled);
        let r: Role = serde_json::from_value(serde_json::json!({
            "roleid": "BlockHost", "privs": "VM.Audit,Sys.Audit", "special": 0
        }))
        .unwrap();
        assert_eq!(r.privileges(), vec!["Sys.Audit", "VM.Audit"]);
        let i: NodeInterface = serde_json::from_value(serde_json::json!({
            "iface": "vmbr0", "type": "bridge", "active": "1", "cidr": "192.0.2.10/24"
        }))
        .unwrap();
        assert!(i.is_bridge() && i.active);
        let t: NewToken = serde_json::from_value(serde_json::json!({
            "full-tokenid": "blockhost@pve!blockhostd", "value": "uuid", "info": {}
        }))
        .unwrap();
        assert!(!format!("{t:?}").contains("uuid"));
    }
}
