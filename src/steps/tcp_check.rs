//! `tcp_check`: can a TCP connection be opened to `host:port` (the seed's `nc -zv kafka 9092`)?

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use super::short::FromShort;
use super::{CompileError, Flavour, Kind, StepCx, StepError, StepOutput};
use schemars::JsonSchema;
use serde::Deserialize;

impl FromShort for RawTcpCheck {
    fn from_short(address: String) -> Self {
        RawTcpCheck { address }
    }
}

/// `tcp_check: "kafka:9092"` or `{ address: "kafka:9092" }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTcpCheck {
    pub address: String,
}

#[derive(Debug)]
pub struct TcpCheckStep {
    pub address: String,
}

impl Kind for TcpCheckStep {
    type Raw = RawTcpCheck;
    type Input = Input;

    fn compile(r: RawTcpCheck) -> Result<Self, CompileError> {
        Ok(TcpCheckStep { address: r.address })
    }

    fn is_read(&self) -> bool {
        true
    }

    fn templates(&self) -> Vec<(String, &str, Flavour)> {
        vec![("tcp_check".into(), self.address.as_str(), Flavour::Text)]
    }

    fn render(&self, cx: &StepCx<'_>) -> Result<Input, StepError> {
        let address = cx
            .services
            .templates
            .render(&self.address, cx.ctx)
            .map_err(StepError::template)?;
        Ok(Input { address })
    }

    async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
        execute(i, cx).await
    }
}

#[derive(Debug, Serialize)]
pub struct Input {
    pub address: String,
}

pub async fn execute(i: Input, cx: &StepCx<'_>) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    match tokio::time::timeout(cx.timeout, tokio::net::TcpStream::connect(&i.address)).await {
        Ok(Ok(_)) => Ok(StepOutput::value(
            json!({ "address": i.address, "connected": true, "ms": started.elapsed().as_millis() as u64 }),
        )),
        Ok(Err(e)) => Err(StepError::retryable(format!(
            "cannot connect to {}: {e}",
            i.address
        ))),
        Err(_) => Err(StepError::retryable(format!(
            "connecting to {} timed out",
            i.address
        ))),
    }
}
