//! Who the command line acts as, in audit records and run answers: `--actor NAME` (or
//! `RUNBOOK_ACTOR`) as given, else `cli:USER` where USER is `$USER`, else the operating system's
//! name for the process's user (from `/etc/passwd`), else `uid:N`.

use std::sync::OnceLock;

static ACTOR: OnceLock<String> = OnceLock::new();

/// Sets the actor from `--actor` once, at the start of a command.
pub(super) fn set(given: Option<&str>) {
    let actor = given
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map_or_else(|| format!("cli:{}", os_user()), ToOwned::to_owned);
    let _ = ACTOR.set(actor);
}

/// The actor, as set at the start of the command (or found now, in tests that set nothing).
pub(crate) fn actor() -> String {
    ACTOR.get_or_init(|| format!("cli:{}", os_user())).clone()
}

/// `$USER` when set, else the name `/etc/passwd` gives the process's user id, else `uid:N`.
fn os_user() -> String {
    if let Some(user) = std::env::var("USER").ok().filter(|u| !u.trim().is_empty()) {
        return user;
    }
    let uid = rustix::process::getuid().as_raw();
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| user_of(&text, uid))
        .unwrap_or_else(|| format!("uid:{uid}"))
}

/// The name of `uid` in passwd-format `text` (`name:x:uid:gid:...`).
fn user_of(text: &str, uid: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid && !name.is_empty()).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::user_of;

    #[test]
    fn finds_the_name_of_a_uid_in_passwd() {
        let text =
            "root:x:0:0:root:/root:/bin/bash\n# comment\nops:x:1000:1000::/home/ops:/bin/sh\n";
        assert_eq!(user_of(text, 1000).as_deref(), Some("ops"));
        assert_eq!(user_of(text, 0).as_deref(), Some("root"));
        assert_eq!(user_of(text, 7), None);
    }
}
