//! What a plan's templates see of a step that did not run: an [`Unknown`] value. Reading
//! anything of it (an attribute, its truth, its text, its length, a comparison) notes the path
//! read in a [`Touched`], so the engine tells "false" from "depends on a change that was not
//! made": a `when` that touched one is unknown, whatever it evaluated to, and an input that
//! touched one is not executed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::{Arc, Mutex},
};

use minijinja::{
    value::{Enumerator, Object, ObjectRepr},
    Value,
};
use serde_json::{Map, Value as Json};

/// The unknown values one evaluation read, by path (`steps.scale.output.after`).
#[derive(Clone, Debug, Default)]
pub(super) struct Touched(Arc<Mutex<BTreeSet<String>>>);

impl Touched {
    /// Whether anything unknown was read.
    pub fn any(&self) -> bool {
        self.0.lock().map(|s| !s.is_empty()).unwrap_or(true)
    }

    /// The paths read, the deepest of each chain only.
    pub fn paths(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn note(&self, path: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.insert(path.to_owned());
        }
    }

    /// `child` was read through `parent`: only the longer path is kept.
    fn deeper(&self, parent: &str, child: &str) {
        if let Ok(mut s) = self.0.lock() {
            s.remove(parent);
            s.insert(child.to_owned());
        }
    }
}

/// A value nobody knows yet: what a change that a plan did not make would have produced. It
/// renders as `<unknown: PATH>`.
#[derive(Debug)]
pub(super) struct Unknown {
    path: String,
    touched: Touched,
}

impl Unknown {
    pub fn value(path: impl Into<String>, touched: &Touched) -> Value {
        Value::from_object(Unknown {
            path: path.into(),
            touched: touched.clone(),
        })
    }
}

impl Object for Unknown {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let child = match key.as_str() {
            Some(k) => format!("{}.{k}", self.path),
            None => format!("{}[{key}]", self.path),
        };
        self.touched.deeper(&self.path, &child);
        Some(Unknown::value(child, &self.touched))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.touched.note(&self.path);
        Enumerator::Empty
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        self.touched.note(&self.path);
        None
    }

    fn is_true(self: &Arc<Self>) -> bool {
        self.touched.note(&self.path);
        false
    }

    fn custom_cmp(
        self: &Arc<Self>,
        _other: &minijinja::value::DynObject,
    ) -> Option<std::cmp::Ordering> {
        self.touched.note(&self.path);
        None
    }

    fn render(self: &Arc<Self>, f: &mut fmt::Formatter<'_>) -> fmt::Result
    where
        Self: Sized + 'static,
    {
        self.touched.note(&self.path);
        write!(f, "<unknown: {}>", self.path)
    }
}

/// `base` (the context as the templates see it) with `steps.<id>` an [`Unknown`] for every id
/// in `unknown`; the other steps are taken from `ctx`.
pub(super) fn with_unknown_steps(
    base: Value,
    ctx: &Map<String, Json>,
    unknown: &BTreeSet<String>,
    touched: &Touched,
) -> Value {
    let mut steps: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(Json::Object(done)) = ctx.get("steps") {
        for (id, r) in done {
            steps.insert(id.clone(), Value::from_serialize(r));
        }
    }
    for id in unknown {
        steps.insert(id.clone(), Unknown::value(format!("steps.{id}"), touched));
    }
    let mut top: BTreeMap<String, Value> = BTreeMap::new();
    if let Ok(keys) = base.try_iter() {
        for k in keys {
            if let (Some(name), Ok(v)) = (k.as_str(), base.get_item(&k)) {
                top.insert(name.to_owned(), v);
            }
        }
    }
    top.insert("steps".into(), Value::from(steps));
    Value::from(top)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(expr: &str, unknown: &[&str]) -> (Result<bool, String>, Vec<String>) {
        let ctx = json!({
            "params": { "threshold": 1000, "on": true },
            "steps": {
                "depth": { "status": "succeeded", "rows": [{ "count": 1200 }] },
                "scale": { "status": "planned", "rows": [], "output": null },
            },
        });
        let ctx = ctx.as_object().unwrap().clone();
        let touched = Touched::default();
        let set = unknown.iter().map(|s| s.to_string()).collect();
        let value = with_unknown_steps(Value::from_serialize(&ctx), &ctx, &set, &touched);
        let env = minijinja::Environment::new();
        let result = env
            .compile_expression(expr)
            .and_then(|e| e.eval(&value))
            .map(|v| v.is_true())
            .map_err(|e| e.to_string());
        (result, touched.paths())
    }

    #[test]
    fn reading_a_planned_step_is_noted_whatever_the_expression_gives() {
        // Known values evaluate as ever, and touch nothing.
        let (r, t) = eval("steps.depth.rows[0].count > params.threshold", &["scale"]);
        assert_eq!((r, t.len()), (Ok(true), 0));
        // Without the marking, a planned step's output reads as missing: a false negative.
        let (r, t) = eval("steps.scale.status == 'succeeded'", &[]);
        assert_eq!((r, t.len()), (Ok(false), 0));
        // With it, every way of reading it is noted, with the path read.
        for expr in [
            "steps.scale.status == 'succeeded'",
            "steps.scale.output.after.workerConcurrency > 3",
            "steps.scale.rows | length > 0",
            "steps.scale",
            "not steps.scale.output",
            "(steps.scale.output.n | default(0)) > 1",
            "steps.depth.rows | length > 0 and steps.scale.output.deleted > 0",
        ] {
            let (_, t) = eval(expr, &["scale"]);
            assert!(!t.is_empty(), "{expr}: nothing noted");
            assert!(
                t.iter().all(|p| p.starts_with("steps.scale")),
                "{expr}: {t:?}"
            );
        }
        let (_, t) = eval("steps.scale.output.after.workerConcurrency > 3", &["scale"]);
        assert_eq!(
            t,
            vec!["steps.scale.output.after.workerConcurrency".to_owned()]
        );
        // A short cut that never reads it is not unknown.
        let (r, t) = eval(
            "params.threshold > 5000 and steps.scale.output.n > 0",
            &["scale"],
        );
        assert_eq!((r, t.len()), (Ok(false), 0));
    }

    #[test]
    fn an_unknown_renders_as_a_marker_naming_its_path() {
        let ctx = json!({ "steps": {} });
        let ctx = ctx.as_object().unwrap().clone();
        let touched = Touched::default();
        let set = ["scale".to_owned()].into();
        let value = with_unknown_steps(Value::from_serialize(&ctx), &ctx, &set, &touched);
        let env = minijinja::Environment::new();
        let text = env
            .render_str("to {{ steps.scale.output.after }}", &value)
            .unwrap();
        assert_eq!(text, "to <unknown: steps.scale.output.after>");
        assert!(touched.any());
    }
}
