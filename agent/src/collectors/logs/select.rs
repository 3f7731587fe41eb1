//! Which files a file source reads: include and exclude globs, and never a compressed file.
//!
//! Globs follow `globset`: `*` stays within a path component, `**` crosses them
//! (`/var/log/**/*.log`). Rotated files that logrotate compressed (`.gz`, `.xz`, …) are never
//! read, whatever the globs say: their lines were read before they were compressed, and reading
//! them would produce garbage.

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Extensions of compressed files, which are never read.
const COMPRESSED: &[&str] = &["gz", "bz2", "xz", "zst", "lz4", "lzma", "z", "zip", "Z"];

/// A glob that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {glob:?} is not a valid glob: {reason}")]
pub struct GlobError {
    /// `include` or `exclude`.
    pub field: &'static str,
    pub glob: String,
    pub reason: String,
}

/// The files a source selects; see the module documentation.
#[derive(Debug, Clone)]
pub struct Selection {
    include: GlobSet,
    exclude: GlobSet,
    roots: Vec<PathBuf>,
}

impl Selection {
    /// Files matching any of `include` and none of `exclude`. Globs are absolute paths; an
    /// exclude glob may also start with `**/` to match anywhere.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selection, GlobError> {
        let mut roots: Vec<PathBuf> = include.iter().map(|g| literal_root(g)).collect();
        roots.sort();
        roots.dedup();
        // A root inside another is watched and scanned through it.
        let mut kept: Vec<PathBuf> = Vec::new();
        for root in roots {
            if !kept.iter().any(|k| root.starts_with(k)) {
                kept.push(root);
            }
        }
        Ok(Selection {
            include: set("include", include)?,
            exclude: set("exclude", exclude)?,
            roots: kept,
        })
    }

    /// Whether the source reads `path`.
    pub fn selects(&self, path: &Path) -> bool {
        let compressed = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| COMPRESSED.contains(&e));
        !compressed && self.include.is_match(path) && !self.exclude.is_match(path)
    }

    /// The directories under which every selected file lies: where to watch and rescan.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }
}

fn set(field: &'static str, globs: &[String]) -> Result<GlobSet, GlobError> {
    let error = |glob: &str, reason: String| GlobError {
        field,
        glob: glob.to_owned(),
        reason,
    };
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        let anywhere = field == "exclude" && glob.starts_with("**/");
        if !Path::new(glob).is_absolute() && !anywhere {
            let must = if field == "exclude" {
                "it must be an absolute path or start with **/"
            } else {
                "it must be an absolute path"
            };
            return Err(error(glob, must.to_owned()));
        }
        let parsed: Glob = GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| error(glob, e.kind().to_string()))?;
        builder.add(parsed);
    }
    builder.build().map_err(|e| error("", e.to_string()))
}

/// The longest leading directory of `glob` without a glob character.
fn literal_root(glob: &str) -> PathBuf {
    let mut root = PathBuf::new();
    let components: Vec<Component<'_>> = Path::new(glob).components().collect();
    for (i, c) in components.iter().enumerate() {
        let text = c.as_os_str().to_string_lossy();
        // The last component is the file name, even when it has no glob character.
        if i + 1 == components.len() || text.contains(['*', '?', '[', '{']) {
            break;
        }
        root.push(c);
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn include_exclude_and_compressed_files() {
        let s = Selection::new(
            &strings(&[
                "/var/log/**/*.log",
                "/var/log/syslog*",
                "/srv/app/current.log",
            ]),
            &strings(&["/var/log/private/**", "**/*debug*"]),
        )
        .unwrap();
        let table = [
            ("/var/log/nginx/access.log", true),
            ("/var/log/a/b/c/deep.log", true),
            ("/var/log/syslog", true),
            ("/var/log/syslog.1", true),
            ("/var/log/syslog.2.gz", false),
            ("/var/log/nginx/access.log.1.xz", false),
            ("/var/log/private/secret.log", false),
            ("/var/log/app/debug.log", false),
            ("/srv/app/current.log", true),
            ("/srv/app/other.log", false),
            ("/var/log/nginx/access.txt", false),
        ];
        for (path, want) in table {
            assert_eq!(s.selects(Path::new(path)), want, "{path}");
        }
    }

    #[test]
    fn a_star_stays_within_its_directory() {
        let s = Selection::new(&strings(&["/var/log/*.log"]), &[]).unwrap();
        assert!(s.selects(Path::new("/var/log/kern.log")));
        assert!(!s.selects(Path::new("/var/log/nginx/access.log")));
    }

    #[test]
    fn roots_are_the_literal_directories_none_inside_another() {
        let s = Selection::new(
            &strings(&[
                "/var/log/**/*.log",
                "/var/log/nginx/*.log",
                "/srv/app/current.log",
                "/opt/*/logs/*.log",
            ]),
            &[],
        )
        .unwrap();
        let roots: Vec<&str> = s.roots().iter().map(|r| r.to_str().unwrap()).collect();
        assert_eq!(roots, ["/opt", "/srv/app", "/var/log"]);
    }

    #[test]
    fn bad_globs_are_named_with_their_field() {
        let err = Selection::new(&strings(&["/var/log/[.log"]), &[]).unwrap_err();
        assert_eq!(
            (err.field, err.glob.as_str()),
            ("include", "/var/log/[.log")
        );
        assert!(
            err.to_string()
                .starts_with("include: \"/var/log/[.log\" is not a valid glob: "),
            "{err}"
        );
        let err = Selection::new(&strings(&["/var/log/*.log"]), &strings(&["*.tmp"])).unwrap_err();
        assert_eq!(err.field, "exclude");
        assert!(err.reason.contains("absolute"), "{err}");
    }
}
