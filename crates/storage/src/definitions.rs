//! `DefinitionsStore`: one JSON document (vhosts, exchanges, bindings, queue and stream
//! definitions...) replaced atomically: write tmp, fsync, rename, fsync directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::IoContext;
use crate::storage::Ctx;
use crate::sync::lock;
use crate::vfs::sync_dir;
use crate::{Result, StorageError};

/// Name of the definitions file under the root.
pub const DEFINITIONS_FILE: &str = "definitions.json";
/// Largest definitions document accepted (checked before reading or writing).
pub const DEFINITIONS_BYTES_MAX: u64 = 64 << 20;

/// Crash-safe storage of one serde value. After a crash, `load` returns either the old or
/// the new value, never a mix. Definitions are small and rarely written, so a JSON file is
/// enough: inspectable by hand, and no embedded database dependency.
#[derive(Clone)]
pub struct DefinitionsStore {
    ctx: Arc<Ctx>,
    path: PathBuf,
}

impl std::fmt::Debug for DefinitionsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefinitionsStore")
            .field("path", &self.path)
            .finish()
    }
}

impl DefinitionsStore {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        let path = ctx.root.join(DEFINITIONS_FILE);
        DefinitionsStore { ctx, path }
    }

    /// The stored value, or `None` if nothing was ever stored.
    ///
    /// # Errors
    /// `Json` if the document does not decode as `T`, `TooLarge` above 64 MiB.
    pub fn load<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>> {
        let size = match fs::metadata(&self.path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(&self.path, e)),
        };
        if size > DEFINITIONS_BYTES_MAX {
            return Err(StorageError::TooLarge {
                what: "definitions",
                size,
                limit: DEFINITIONS_BYTES_MAX,
            });
        }
        let data = fs::read(&self.path).at(&self.path)?;
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| StorageError::Json {
                path: self.path.clone(),
                source,
            })
    }

    /// Replaces the stored value atomically and durably.
    pub fn store<T: serde::Serialize>(&self, value: &T) -> Result<()> {
        let data = serde_json::to_vec_pretty(value).map_err(|source| StorageError::Json {
            path: self.path.clone(),
            source,
        })?;
        if data.len() as u64 > DEFINITIONS_BYTES_MAX {
            return Err(StorageError::TooLarge {
                what: "definitions",
                size: data.len() as u64,
                limit: DEFINITIONS_BYTES_MAX,
            });
        }
        let _g = lock(&self.ctx.defs_lock);
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(&data).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        drop(f);
        fs::rename(&tmp, &self.path).at(&self.path)?;
        sync_dir(&self.ctx.root).at(&self.ctx.root)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Storage, StorageConfig, StorageError};
    use std::collections::BTreeMap;

    #[test]
    fn store_load_replace() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        let d = s.definitions();
        assert_eq!(d.load::<BTreeMap<String, u32>>().unwrap(), None);
        let mut m = BTreeMap::new();
        m.insert("q1".to_string(), 1u32);
        d.store(&m).unwrap();
        m.insert("q2".to_string(), 2);
        d.store(&m).unwrap();
        assert_eq!(d.load::<BTreeMap<String, u32>>().unwrap(), Some(m));
        assert!(!dir.path().join("definitions.json.tmp").exists());
        assert!(matches!(
            d.load::<Vec<u8>>(),
            Err(StorageError::Json { .. })
        ));
    }
}
