//! The zip archive `torch.save` writes: its entries, `data.pkl`, the byte order and the
//! storages, each read within the limits of the module above.

use super::*;

pub(super) struct Archive<'p, R: Read + Seek> {
    pub(super) zip: ZipArchive<R>,
    pub(super) path: &'p Path,
    /// Entry-name prefix, with its trailing '/' (empty for entries at the root).
    pub(super) prefix: String,
    pub(super) big_endian: bool,
    /// Bytes the reader may inflate and return: [`read_budget`] of the file's size.
    pub(super) budget: u64,
}

impl<'p, R: Read + Seek> Archive<'p, R> {
    pub(super) fn open(mut zip: ZipArchive<R>, path: &'p Path, file_len: u64) -> Result<Self> {
        let first_top = zip
            .name_for_index(0)
            .and_then(|n| n.split_once('/'))
            .map(|(top, _)| format!("{top}/"));
        let candidates: Vec<String> = zip
            .file_names()
            .filter_map(|name| {
                let prefix = name.strip_suffix("data.pkl")?;
                let ok = prefix.is_empty()
                    || (prefix.ends_with('/') && !prefix[..prefix.len() - 1].contains('/'));
                ok.then(|| prefix.to_string())
            })
            .collect();
        let prefix =
            match candidates.as_slice() {
                [] => return Err(bad(
                    path,
                    "the zip archive has no data.pkl entry, so it is not a torch.save checkpoint",
                )),
                [one] => one.clone(),
                many => match many.iter().find(|p| Some(*p) == first_top.as_ref()) {
                    Some(p) => p.clone(),
                    None => {
                        return Err(bad(
                            path,
                            format!("the zip archive has several data.pkl entries ({many:?})"),
                        ))
                    }
                },
            };
        let big_endian = match read_entry(&mut zip, &format!("{prefix}byteorder"), 16, path)? {
            None => false,
            Some(b) => match String::from_utf8_lossy(&b).trim() {
                "little" => false,
                "big" => true,
                other => {
                    return Err(bad(
                        path,
                        format!("unknown byte order '{other}' (expected little or big)"),
                    ))
                }
            },
        };
        Ok(Archive {
            zip,
            path,
            prefix,
            big_endian,
            budget: read_budget(file_len),
        })
    }

    pub(super) fn read_pickle(&mut self) -> Result<Pickle> {
        let name = format!("{}data.pkl", self.prefix);
        let data = read_entry(&mut self.zip, &name, MAX_PICKLE_BYTES, self.path)?
            .ok_or_else(|| bad(self.path, format!("entry {name} is missing")))?;
        Unpickler::new(&data)
            .load()
            .map_err(|e| bad(self.path, e.to_string()))
    }

    /// Converts the selected tensors, reading each storage once and dropping it after its last
    /// use.
    pub(super) fn materialize(
        &mut self,
        entries: &[(String, &TensorRef)],
    ) -> Result<Vec<NamedTensor>> {
        let mut uses: HashMap<&str, usize> = HashMap::new();
        for (_, t) in entries {
            if t.dtype.is_float() {
                *uses.entry(t.storage.key.as_str()).or_default() += 1;
            }
        }
        self.check_budget(entries)?;
        let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
        let mut total: u64 = 0;
        let mut out = Vec::with_capacity(entries.len());
        for (name, t) in entries {
            if !t.dtype.is_float() {
                log::debug!(
                    "{}: skipping '{name}' (dtype {}, not floating point)",
                    self.path.display(),
                    t.dtype.name()
                );
                continue;
            }
            if out.len() >= MAX_TENSORS {
                return Err(bad(
                    self.path,
                    format!("the state dict holds more than {MAX_TENSORS} float tensors"),
                ));
            }
            let numel = t.numel();
            total = total.saturating_add(numel);
            if total > MAX_TOTAL_ELEMENTS {
                return Err(bad(
                    self.path,
                    format!(
                        "the tensors up to '{name}' hold more than {MAX_TOTAL_ELEMENTS} elements in all"
                    ),
                ));
            }
            let key = t.storage.key.as_str();
            if !cache.contains_key(key) {
                let bytes = self.read_storage(&t.storage)?;
                cache.insert(key.to_string(), bytes);
            }
            let bytes = &cache[key];
            let data = gather(t, bytes, self.big_endian)
                .map_err(|why| bad(self.path, format!("tensor '{name}': {why}")))?;
            let shape = t
                .size
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<usize>, _>>()
                .map_err(|_| bad(self.path, format!("tensor '{name}': size does not fit")))?;
            out.push((name.clone(), shape, data));
            let left = uses.get_mut(key).expect("counted above");
            *left -= 1;
            if *left == 0 {
                cache.remove(key);
            }
        }
        Ok(out)
    }

    /// Before anything is inflated: the storages the float tensors use (as their entries
    /// declare them) and the f32 tensors returned must each fit in [`Self::budget`], so a
    /// small file cannot make the reader allocate much more than its own size.
    fn check_budget(&self, entries: &[(String, &TensorRef)]) -> Result<()> {
        let mut storages: HashMap<&str, u64> = HashMap::new();
        let mut out_bytes: u64 = 0;
        let mut elements: u64 = 0;
        for (name, t) in entries {
            if !t.dtype.is_float() {
                continue;
            }
            let nbytes = t.storage.nbytes().unwrap_or(u64::MAX);
            if nbytes > MAX_STORAGE_BYTES {
                return Err(bad(
                    self.path,
                    format!(
                        "storage '{}' declares {} elements ({nbytes} bytes), more than the limit of {MAX_STORAGE_BYTES} bytes",
                        t.storage.key, t.storage.numel
                    ),
                ));
            }
            storages.insert(t.storage.key.as_str(), nbytes);
            let inflated = storages.values().fold(0u64, |a, &b| a.saturating_add(b));
            if inflated > self.budget {
                return Err(bad(
                    self.path,
                    format!(
                        "the storages up to tensor '{name}' declare {inflated} bytes, over the reading budget of {} bytes for this {}",
                        self.budget,
                        budget_rule()
                    ),
                ));
            }
            let numel = t.numel();
            elements = elements.saturating_add(numel);
            out_bytes = out_bytes.saturating_add(numel.saturating_mul(4));
            if out_bytes > self.budget {
                let broadcast = if numel > t.storage.numel {
                    format!(
                        " ('{name}' is a broadcast view of {numel} elements over a storage of {}; save it with .contiguous() if it is meant)",
                        t.storage.numel
                    )
                } else {
                    String::new()
                };
                return Err(bad(
                    self.path,
                    format!(
                        "the tensors up to '{name}' hold {elements} elements in all ({out_bytes} bytes as f32), over the reading budget of {} bytes for this {}{broadcast}",
                        self.budget,
                        budget_rule()
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn read_storage(&mut self, s: &StorageRef) -> Result<Vec<u8>> {
        let path = self.path;
        let nbytes = s.nbytes().ok_or_else(|| {
            bad(
                path,
                format!("storage '{}' has an unknown element size", s.key),
            )
        })?;
        if nbytes > MAX_STORAGE_BYTES {
            return Err(bad(
                path,
                format!(
                    "storage '{}' declares {} elements ({nbytes} bytes), more than the limit of {MAX_STORAGE_BYTES} bytes",
                    s.key, s.numel
                ),
            ));
        }
        let name = format!("{}data/{}", self.prefix, s.key);
        let mut file = match self.zip.by_name(&name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(bad(path, format!("storage entry {name} is missing")))
            }
            Err(e) => return Err(bad(path, format!("cannot read entry {name}: {e}"))),
        };
        if file.size() != nbytes {
            return Err(bad(
                path,
                format!(
                    "storage '{}' declares {} elements of {} ({nbytes} bytes) but entry {name} holds {} bytes",
                    s.key,
                    s.numel,
                    s.dtype.name(),
                    file.size()
                ),
            ));
        }
        let mut buf = Vec::new();
        (&mut file)
            .take(nbytes + 1)
            .read_to_end(&mut buf)
            .map_err(|e| bad(path, format!("cannot read entry {name}: {e}")))?;
        if buf.len() as u64 != nbytes {
            return Err(bad(
                path,
                format!(
                    "entry {name} should hold {nbytes} bytes but {} could be read",
                    buf.len()
                ),
            ));
        }
        Ok(buf)
    }
}

/// Reads a whole entry if it exists, refusing entries larger than `limit` bytes.
pub(super) fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    limit: u64,
    path: &Path,
) -> Result<Option<Vec<u8>>> {
    let mut file = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(bad(path, format!("cannot read entry {name}: {e}"))),
    };
    if file.size() > limit {
        return Err(bad(
            path,
            format!(
                "entry {name} declares {} bytes, more than the limit of {limit}",
                file.size()
            ),
        ));
    }
    let mut buf = Vec::new();
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(path, format!("cannot read entry {name}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(bad(
            path,
            format!("entry {name} holds more than the limit of {limit} bytes"),
        ));
    }
    Ok(Some(buf))
}
