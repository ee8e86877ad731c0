//! Which variables a template may read at its place in a playbook: declared parameters, steps
//! that ran before it (a step reads its own result only in `until`), `item` inside `for_each`,
//! `failed_step` in `on_failure`, and the fixed roots of the run's context.

use std::collections::BTreeSet;

/// Template roots a playbook may read.
pub(super) const ROOTS: &[&str] = &[
    "alert", "alerts", "params", "steps", "runtime", "run", "now", "env", "actions", "loop",
];

/// Variables visible to one template.
#[derive(Clone, Copy)]
pub(super) struct Scope<'s> {
    pub params: &'s BTreeSet<String>,
    /// Steps that have run (or may have run) before this one.
    pub earlier: &'s BTreeSet<String>,
    pub all_steps: &'s BTreeSet<String>,
    pub this_step: Option<&'s str>,
    /// `until` may read the step's own result.
    pub self_visible: bool,
    pub item: bool,
    pub failed_step: bool,
}

/// The problem with reading `var` (a dotted path) in `scope`, if any.
pub(super) fn check_var(var: &str, scope: &Scope) -> Option<String> {
    let mut parts = var.split('.');
    let root = parts.next().unwrap_or_default();
    let second = parts.next();
    match root {
        "item" if scope.item => None,
        "item" => Some("`item` is only defined in a step with `for_each`".into()),
        "failed_step" if scope.failed_step => None,
        "failed_step" => Some("`failed_step` is only defined in `on_failure` steps".into()),
        "params" => match second {
            Some(p) if !scope.params.contains(p) => Some(format!(
                "unknown parameter `{p}` (declared: {})",
                if scope.params.is_empty() {
                    "none".to_owned()
                } else {
                    join(scope.params)
                }
            )),
            _ => None,
        },
        "steps" => match second {
            Some(s) if scope.this_step == Some(s) && scope.self_visible => None,
            Some(s) if scope.this_step == Some(s) => Some(format!(
                "step `{s}` reads its own result; only `until` may do that"
            )),
            Some(s) if !scope.all_steps.contains(s) => Some(format!("unknown step `{s}`")),
            Some(s) if !scope.earlier.contains(s) => {
                Some(format!("step `{s}` runs later; it has no result yet"))
            }
            _ => None,
        },
        r if ROOTS.contains(&r) => None,
        // minijinja reports functions and filters it does not know as variables too.
        "ago" | "age" | "ident" | "in_window" | "range" | "dict" | "namespace" | "debug" => None,
        other => Some(format!(
            "unknown variable `{other}` (available: {})",
            ROOTS.join(", ")
        )),
    }
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn steps_are_visible_only_after_they_run() {
        let (params, earlier, all) = (
            set(&["older_than"]),
            set(&["before"]),
            set(&["before", "this", "after"]),
        );
        let scope = Scope {
            params: &params,
            earlier: &earlier,
            all_steps: &all,
            this_step: Some("this"),
            self_visible: false,
            item: false,
            failed_step: false,
        };
        assert_eq!(check_var("steps.before.rows", &scope), None);
        assert_eq!(check_var("params.older_than", &scope), None);
        assert_eq!(check_var("runtime.workerConcurrency", &scope), None);
        let later = check_var("steps.after.rows", &scope).unwrap();
        assert!(later.contains("runs later"), "{later}");
        let own = check_var("steps.this.rows", &scope).unwrap();
        assert!(own.contains("only `until`"), "{own}");
        assert_eq!(
            check_var(
                "steps.this.rows",
                &Scope {
                    self_visible: true,
                    ..scope
                }
            ),
            None
        );
        let unknown = check_var("steps.nope.rows", &scope).unwrap();
        assert!(unknown.contains("unknown step `nope`"), "{unknown}");
        let param = check_var("params.nope", &scope).unwrap();
        assert!(param.contains("declared: older_than"), "{param}");
    }

    #[test]
    fn item_and_failed_step_have_their_places() {
        let empty = BTreeSet::new();
        let scope = Scope {
            params: &empty,
            earlier: &empty,
            all_steps: &empty,
            this_step: None,
            self_visible: false,
            item: false,
            failed_step: false,
        };
        assert!(check_var("item", &scope).unwrap().contains("for_each"));
        assert_eq!(
            check_var(
                "item.id",
                &Scope {
                    item: true,
                    ..scope
                }
            ),
            None
        );
        assert!(check_var("failed_step.error", &scope)
            .unwrap()
            .contains("on_failure"));
        assert_eq!(
            check_var(
                "failed_step.error",
                &Scope {
                    failed_step: true,
                    ..scope
                }
            ),
            None
        );
        let typo = check_var("parmas.x", &scope).unwrap();
        assert!(typo.contains("unknown variable `parmas`"), "{typo}");
    }
}
