//! `shell`: run a program from the config's allowlist with an argv list. No shell parses
//! anything: each element is rendered on its own and passed as one argument.

use std::{process::Stdio, time::Duration};

use rustix::process::{kill_process_group, test_kill_process_group, Pid, Signal};

use serde::Serialize;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use schemars::JsonSchema;
use serde::Deserialize;
use serde::{
    de::{
        self,
        value::{MapAccessDeserializer, SeqAccessDeserializer},
        MapAccess, SeqAccess,
    },
    Deserializer,
};
use std::fmt;

/// `shell: [kubectl, get, pods]`: an argv list, each element a template rendered on its own.
#[derive(Debug, JsonSchema)]
pub struct RawShell {
    pub argv: Vec<String>,
    /// Bytes of stdout/stderr kept (default 64 KiB).
    pub max_output: Option<usize>,
}

impl<'de> Deserialize<'de> for RawShell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            argv: Vec<String>,
            #[serde(default)]
            max_output: Option<usize>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RawShell;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an argv list such as [kubectl, get, pods] or {argv: [...], max_output: N}",
                )
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawShell, E> {
                Err(E::custom("a shell step takes an argv list, never a command line: write [cmd, arg1, arg2]"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawShell, A::Error> {
                let argv = Vec::<String>::deserialize(SeqAccessDeserializer::new(seq))?;
                Ok(RawShell {
                    argv,
                    max_output: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawShell, A::Error> {
                let l = Long::deserialize(MapAccessDeserializer::new(map))?;
                Ok(RawShell {
                    argv: l.argv,
                    max_output: l.max_output,
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

const DEFAULT_MAX_OUTPUT: usize = 64 * 1024;

#[derive(Debug)]
pub struct ShellStep {
    pub argv: Vec<String>,
    pub max_output: usize,
}

impl Kind for ShellStep {
    type Raw = RawShell;
    type Input = Input;

    fn compile(r: RawShell) -> Result<Self, CompileError> {
        if r.argv.is_empty() {
            return Err((
                ".shell".into(),
                "a shell step needs at least the program name".into(),
            ));
        }
        if r.argv[0].contains("{{") || r.argv[0].contains("{%") {
            return Err((
                ".shell[0]".into(),
                "the program name must be literal, not a template".into(),
            ));
        }
        Ok(ShellStep {
            argv: r.argv,
            max_output: r.max_output.unwrap_or(DEFAULT_MAX_OUTPUT),
        })
    }

    fn is_read(&self) -> bool {
        false
    }

    fn check_names(&self, names: &super::Names) -> Vec<(String, String)> {
        let program = &self.argv[0];
        if names.shell_allow.contains(program) {
            return vec![];
        }
        vec![(
            "shell[0]".into(),
            format!(
                "shell program `{program}` is not allowed: add it to `shell.allow` in the config \
                 (allowed: {})",
                super::names::list(&names.shell_allow)
            ),
        )]
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        self.argv
            .iter()
            .enumerate()
            .map(|(i, a)| (format!("shell[{i}]"), a.as_str(), Flavour::Text))
            .collect()
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let mut argv = Vec::with_capacity(self.argv.len());
        let mut after_double_dash = false;
        for template in &self.argv {
            let value = cx
                .services
                .templates
                .render(template, cx.ctx)
                .map_err(StepError::template)?;
            // A value from a template must not turn into an option (`--all`, `--kubeconfig=...`):
            // only an element whose literal text starts with `-` may render to one, or any element
            // after a literal `--`.
            if value.starts_with('-') && !template.starts_with('-') && !after_double_dash {
                return Err(StepError::fatal(format!(
                    "argument `{value}` would be read as an option; write the option literally (`--name={{{{ x }}}}`) or put `--` before it"
                )));
            }
            after_double_dash |= template == "--";
            argv.push(value);
        }
        Ok(Input {
            argv,
            max_output: self.max_output,
        })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub argv: Vec<String>,
    #[serde(skip)]
    pub max_output: usize,
}

/// How long a step's process group has between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// How long output is still read once the program has exited: what it wrote is in the pipe by
/// then, and a background process it left may hold the pipe open for ever.
const DRAIN: Duration = Duration::from_millis(500);

/// Reads up to `max` bytes into `buf` (counting the rest in `total`) until end of file.
async fn read_capped(
    mut r: impl AsyncReadExt + Unpin,
    max: usize,
    buf: &mut Vec<u8>,
    total: &mut usize,
) {
    let mut chunk = [0u8; 8192];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        *total += n;
        if buf.len() < max {
            buf.extend_from_slice(&chunk[..n.min(max - buf.len())]);
        }
    }
}

fn captured(buf: &[u8], total: usize, max: usize) -> String {
    let mut s = String::from_utf8_lossy(buf).into_owned();
    if total > max {
        s.push_str(&format!("… ({total} bytes)"));
    }
    s
}

/// The process group a step's program runs in (it leads it: `process_group(0)`). Whatever ends
/// the step ends the group, the program's own children too: the step finishing, its timeout, a
/// cancel. Dropped (a timeout drops the step's future), it signals the group TERM, and KILL
/// after [`GRACE`] on a thread of its own.
struct Group {
    pgid: Option<Pid>,
}

impl Group {
    /// TERM now, KILL after the grace unless the group is gone by then.
    fn end(&mut self) {
        let Some(pgid) = self.pgid.take() else {
            return;
        };
        if kill_process_group(pgid, Signal::TERM).is_err() {
            return; // no process left in it
        }
        std::thread::spawn(move || {
            let step = Duration::from_millis(50);
            let mut waited = Duration::ZERO;
            while waited < GRACE {
                std::thread::sleep(step);
                waited += step;
                // Signal 0 only asks whether a process of the group is left.
                if test_kill_process_group(pgid).is_err() {
                    return;
                }
            }
            let _ = kill_process_group(pgid, Signal::KILL);
        });
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.end();
    }
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let program = &i.argv[0];
    let allowed = &cx.services.config.shell.allow;
    if !allowed.iter().any(|a| a == program) {
        return Err(StepError::fatal(format!(
            "shell program `{program}` is not allowed: add it to `shell.allow` in the config (allowed: {})",
            if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") }
        )));
    }
    let mut child = tokio::process::Command::new(program)
        .args(&i.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| StepError::fatal(format!("cannot start `{program}`: {e}")))?;
    let mut group = Group {
        pgid: child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw),
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(StepError::fatal(format!(
            "`{program}` started without its output pipes"
        )));
    };
    let max = i.max_output;
    let (mut out, mut out_total, mut err, mut err_total) = (Vec::new(), 0, Vec::new(), 0);
    let status = {
        let reading = async {
            tokio::join!(
                read_capped(stdout, max, &mut out, &mut out_total),
                read_capped(stderr, max, &mut err, &mut err_total)
            )
        };
        tokio::pin!(reading);
        // Output is read while the program runs, so that it never blocks on a full pipe.
        let mut read_all = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                _ = &mut reading, if !read_all => read_all = true,
                _ = cx.run.cancel.cancelled() => {
                    group.end();
                    let reason = cx.run.cancel.reason().unwrap_or_else(|| "cancelled".to_owned());
                    return Err(StepError::fatal(format!("`{program}` stopped: {reason}")));
                }
            }
        };
        // Anything the program left running goes with it.
        group.end();
        if !read_all {
            // What the program wrote before it exited is in the pipes; a process it left
            // behind may keep them open until it is gone, so the rest is read for a short
            // while only.
            let _ = tokio::time::timeout(DRAIN, &mut reading).await;
        }
        status
    };
    let (out, err) = (
        captured(&out, out_total, max),
        captured(&err, err_total, max),
    );
    let status =
        status.map_err(|e| StepError::fatal(format!("waiting for `{program}` failed: {e}")))?;
    let code = status.code();
    let masker = &cx.services.masker;
    let output = json!({ "exit_code": code, "stdout": masker.mask_str(&out), "stderr": masker.mask_str(&err) });
    if !status.success() {
        return Err(StepError::fatal(format!(
            "`{program}` exited with {}: {}",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into()),
            crate::text::truncate(masker.mask_str(err.trim()).as_str(), 500)
        )));
    }
    let rows = out.lines().map(|l| json!({ "line": l })).collect();
    Ok(StepOutput { rows, output })
}
