//! What a recorded program needs of a device, checked against the device's limits before
//! anything is made on it, so a device too small for a forward (WebGL2's no-compute limits,
//! `Limits::downlevel_defaults()`'s four storage buffers, a binding limit below one image's
//! largest tensor) gets an [`Error::DeviceLimit`] naming the limit, the value needed and the
//! value present, never a panic or raw validation text.
//!
//! The needs come from the recording itself: every dispatch's storage bindings, its workgroup
//! size (read from the `@workgroup_size` of its WGSL after substitution) and grid, and every
//! tensor's size.

use crate::error::{Error, Result};

/// `@workgroup_size(x[, y[, z]])` of a compute shader's entry point. Each dimension is an
/// integer literal, a module-scope `const` of one, or a product of those; `None` when the
/// source has no such attribute or a dimension is something else.
pub fn workgroup_size(wgsl: &str) -> Option<[u32; 3]> {
    let at = wgsl.find("@workgroup_size(")? + "@workgroup_size(".len();
    let args = wgsl[at..].split(')').next()?;
    let mut dims = [1u32; 3];
    for (i, arg) in args
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .enumerate()
    {
        if i >= 3 {
            return None;
        }
        dims[i] = arg.split('*').try_fold(1u32, |acc, factor| {
            acc.checked_mul(const_value(wgsl, factor.trim())?)
        })?;
    }
    Some(dims)
}

/// An integer literal (`8`, `8u`), or the value of `const NAME[: u32] = literal;`.
fn const_value(wgsl: &str, term: &str) -> Option<u32> {
    if let Ok(v) = term.trim_end_matches(['u', 'i']).parse() {
        return Some(v);
    }
    wgsl.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("const ")?;
        let (name, value) = rest.split_once('=')?;
        let name = name.split(':').next()?.trim();
        (name == term)
            .then(|| value.trim().trim_end_matches(';').trim())
            .and_then(|v| v.trim_end_matches(['u', 'i']).parse().ok())
    })
}

/// What one dispatch asks of the device.
#[derive(Clone, Copy, Debug)]
pub struct DispatchNeeds {
    /// Storage buffers bound (one bind group, plus one uniform buffer of parameters).
    pub storage_buffers: u32,
    /// Bytes of its uniform parameters.
    pub uniform_bytes: u64,
    /// `@workgroup_size`.
    pub workgroup: [u32; 3],
    /// Workgroups dispatched.
    pub grid: [u32; 3],
}

/// The limits a program of `dispatches` over tensors of at most `largest_binding` bytes (and
/// arena buffers of at most `largest_buffer`) needs. Limits it does not depend on are copied
/// from `have`, so only these can fail [`check`].
pub fn needed(
    dispatches: impl IntoIterator<Item = DispatchNeeds>,
    largest_binding: u64,
    largest_buffer: u64,
    have: &wgpu::Limits,
) -> wgpu::Limits {
    let mut l = wgpu::Limits {
        max_bind_groups: 1,
        max_storage_buffers_per_shader_stage: 0,
        max_uniform_buffers_per_shader_stage: 1,
        max_uniform_buffer_binding_size: 16,
        max_storage_buffer_binding_size: largest_binding,
        max_buffer_size: largest_buffer.max(largest_binding),
        max_compute_workgroup_size_x: 1,
        max_compute_workgroup_size_y: 1,
        max_compute_workgroup_size_z: 1,
        max_compute_invocations_per_workgroup: 1,
        max_compute_workgroups_per_dimension: 1,
        ..have.clone()
    };
    for d in dispatches {
        l.max_storage_buffers_per_shader_stage = l
            .max_storage_buffers_per_shader_stage
            .max(d.storage_buffers);
        l.max_uniform_buffer_binding_size = l.max_uniform_buffer_binding_size.max(d.uniform_bytes);
        l.max_compute_workgroup_size_x = l.max_compute_workgroup_size_x.max(d.workgroup[0]);
        l.max_compute_workgroup_size_y = l.max_compute_workgroup_size_y.max(d.workgroup[1]);
        l.max_compute_workgroup_size_z = l.max_compute_workgroup_size_z.max(d.workgroup[2]);
        l.max_compute_invocations_per_workgroup = l
            .max_compute_invocations_per_workgroup
            .max(d.workgroup.iter().product());
        l.max_compute_workgroups_per_dimension = l
            .max_compute_workgroups_per_dimension
            .max(d.grid.into_iter().max().unwrap_or(1));
    }
    l
}

/// The first limit in `have` below `needed`, as an error that says what would work.
pub fn check(needed: &wgpu::Limits, have: &wgpu::Limits, borrowed: bool) -> Result<()> {
    if have.max_compute_workgroups_per_dimension == 0 {
        return Err(Error::DeviceLimit {
            limit: "max_compute_workgroups_per_dimension",
            needed: needed.max_compute_workgroups_per_dimension.into(),
            have: 0,
            hint: "the device cannot run compute shaders (WebGL2-class); the engine needs a \
                   WebGPU, Vulkan, Metal, DX12 or GLES 3.1 compute device"
                .into(),
        });
    }
    let mut first: Option<(&'static str, u64, u64)> = None;
    needed.check_limits_with_fail_fn(have, true, |name, need, got| {
        first.get_or_insert((name, need, got));
    });
    let Some((limit, needed, have)) = first else {
        return Ok(());
    };
    let hint = match limit {
        "max_storage_buffer_binding_size" | "max_buffer_size" => {
            "one image's largest tensor (or a weight tensor) must fit one binding; a smaller \
             batch or model, or a device created with the adapter's limits, would"
                .to_string()
        }
        _ if borrowed => "create the device with the adapter's limits \
             (DeviceDescriptor::required_limits: adapter.limits()) or at least wgpu::Limits::default()"
            .to_string(),
        _ => "this adapter is too small for the engine's kernels".to_string(),
    };
    Err(Error::DeviceLimit {
        limit,
        needed,
        have,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workgroup_sizes_parse_literals_constants_and_products() {
        assert_eq!(
            workgroup_size("@compute @workgroup_size(64)\nfn main"),
            Some([64, 1, 1])
        );
        assert_eq!(workgroup_size("@workgroup_size(8, 8)"), Some([8, 8, 1]));
        let src = "const SG: u32 = 16u;\nconst ROWS = 2;\n@compute @workgroup_size(SG * ROWS, 1u)";
        assert_eq!(workgroup_size(src), Some([32, 1, 1]));
        assert_eq!(workgroup_size("@workgroup_size(N)"), None);
        assert_eq!(workgroup_size("fn main() {}"), None);
    }

    #[test]
    fn a_missing_limit_is_named_with_both_values() {
        let need = needed(
            [DispatchNeeds {
                storage_buffers: 5,
                uniform_bytes: 48,
                workgroup: [64, 1, 1],
                grid: [100, 1, 1],
            }],
            1 << 20,
            1 << 21,
            &wgpu::Limits::default(),
        );
        assert!(check(&need, &wgpu::Limits::default(), true).is_ok());
        let downlevel = wgpu::Limits::downlevel_defaults();
        let need = needed(
            [DispatchNeeds {
                storage_buffers: 5,
                uniform_bytes: 48,
                workgroup: [64, 1, 1],
                grid: [100, 1, 1],
            }],
            1 << 20,
            1 << 21,
            &downlevel,
        );
        let e = check(&need, &downlevel, true).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("max_storage_buffers_per_shader_stage is 4")
                && text.contains("needs 5")
                && text.contains("required_limits"),
            "{text}"
        );
        let webgl2 = wgpu::Limits::downlevel_webgl2_defaults();
        let need = needed(
            [DispatchNeeds {
                storage_buffers: 1,
                uniform_bytes: 16,
                workgroup: [64, 1, 1],
                grid: [1, 1, 1],
            }],
            4,
            4,
            &webgl2,
        );
        let e = check(&need, &webgl2, false).unwrap_err();
        assert!(e.to_string().contains("compute"), "{e}");
    }
}
