//! Checks of what templates say, beyond their syntax and the names they read: comparisons that
//! can never come out as their author meant.

use std::sync::LazyLock;

use regex::Regex;

use crate::status::StepStatus;

/// `steps.<id>.status` (or `steps.<id>['status']`) compared with `'ok'` or `"ok"`, either way round.
static STATUS_OK: LazyLock<Regex> = LazyLock::new(|| {
    let status = |group: &str| {
        format!(
            r#"\bsteps\.(?P<{group}>[A-Za-z_][A-Za-z0-9_]*)(?:\.status\b|\[\s*['"]status['"]\s*\])"#
        )
    };
    let ok = r#"(?:'ok'|"ok")"#;
    Regex::new(&format!(
        r"{}\s*(?:==|!=)\s*{ok}|{ok}\s*(?:==|!=)\s*{}",
        status("id"),
        status("rev")
    ))
    .expect("static regex")
});

/// Problems with a template that compares a step's status with `ok`, which no step status is:
/// one per step named, in order of appearance.
pub fn step_status_ok(src: &str) -> Vec<String> {
    let mut steps: Vec<&str> = Vec::new();
    for c in STATUS_OK.captures_iter(src) {
        if let Some(id) = c.name("id").or_else(|| c.name("rev")) {
            if !steps.contains(&id.as_str()) {
                steps.push(id.as_str());
            }
        }
    }
    steps
        .into_iter()
        .map(|id| {
            format!(
                "`steps.{id}.status` is compared with `ok`, which it never is: step status `ok` is spelled `{}`",
                StepStatus::Succeeded
            )
        })
        .collect()
}

/// A warning for a step with `retry` whose kind must not run twice: a `sql` statement that
/// changes things without `idempotent: true` is never retried, so its `retry` does nothing.
pub fn retry_of_a_change(step: &str, attempts: u32, retries_safely: bool) -> Option<String> {
    (attempts > 1 && !retries_safely).then(|| {
        format!(
            "step `{step}` has `retry` but its statement changes things and is not marked \
             `idempotent: true`, so it is never retried (a timed-out or failed change may have \
             done its work); add `idempotent: true` to the `sql` step if running it twice is safe, \
             or remove `retry`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_of_retry_on_a_change_that_is_not_idempotent() {
        assert!(
            retry_of_a_change("purge", 3, false).is_some_and(|w| w.contains("`idempotent: true`"))
        );
        assert_eq!(retry_of_a_change("purge", 1, false), None);
        assert_eq!(retry_of_a_change("depth", 3, true), None);
    }

    #[test]
    fn flags_comparisons_of_step_status_with_ok() {
        let found = step_status_ok("steps.check.status == 'ok'");
        assert_eq!(
            found,
            ["`steps.check.status` is compared with `ok`, which it never is: step status `ok` is spelled `succeeded`"]
        );
        assert_eq!(step_status_ok(r#"steps.a.status!="ok""#).len(), 1);
        assert_eq!(step_status_ok("'ok' == steps.a.status").len(), 1);
        assert_eq!(step_status_ok("steps.a['status'] == 'ok'").len(), 1);
        // In text templates, once per step however often it is compared.
        let text = "{% if steps.a.status == 'ok' %}x{% endif %}{% if steps.a.status != 'ok' %}y{% endif %}\
                    {% if 'ok' != steps.b.status %}z{% endif %}";
        let found = step_status_ok(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("`steps.a.status`") && found[1].starts_with("`steps.b.status`")
        );
    }

    #[test]
    fn leaves_other_comparisons_alone() {
        for src in [
            "steps.a.status == 'succeeded'",
            "steps.a.status == 'failed' or params.mode == 'ok'",
            "steps.a.output.status == 'ok'",
            "steps.a.rows[0].status == 'ok'",
            "my_steps.a.status == 'ok'",
            "steps.a.status == 'okay'",
            "{% if steps.a.status == 'succeeded' %}ok{% endif %}",
        ] {
            assert!(step_status_ok(src).is_empty(), "{src}");
        }
    }
}
