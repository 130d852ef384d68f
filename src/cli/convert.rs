//! `sret-tome convert IN.pth OUT.safetensors`: a PyTorch checkpoint to safetensors (F32).

use std::path::PathBuf;

use clap::Args;

use crate::error::Result;
use crate::io::{checkpoint, safetensors::load_safetensors_bytes};
use crate::model::ModelConfig;

/// Arguments of `sret-tome convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// torch.save checkpoint (PyTorch >= 1.6); the state dict at the top level or under
    /// `model`, `state_dict` or `model_state`.
    pub input: PathBuf,
    /// Safetensors file to write (F32, the state dict's names; integer buffers are dropped).
    pub output: PathBuf,
    /// Also check that the result loads as this model.
    #[arg(long)]
    pub model: Option<String>,
}

/// Run `sret-tome convert`: read the checkpoint's state dict, write it as safetensors, and
/// optionally check that it loads as the named model.
pub fn run(a: ConvertArgs) -> Result<()> {
    crate::io::files::check_output(&a.output, &[&a.input])?;
    let tensors = checkpoint::read_state_dict(&a.input)?;
    let bytes = checkpoint::to_safetensors_bytes(&tensors)?;
    if let Some(name) = &a.model {
        load_safetensors_bytes(&bytes, &a.input, &ModelConfig::by_name(name)?)?;
    }
    crate::io::files::write_atomic_bytes(&a.output, &bytes)?;
    eprintln!("wrote {} tensors to {}", tensors.len(), a.output.display());
    Ok(())
}
