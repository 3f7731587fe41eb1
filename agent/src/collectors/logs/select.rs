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
    /// How deep under each root a selected file can lie (`None`: any depth, for `**`).
    depths: Vec<Option<usize>>,
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
        let depths = kept
            .iter()
            .map(|root| {
                let mut deepest = Some(0);
                for glob in include.iter().filter(|g| literal_root(g).starts_with(root)) {
                    let depth = (!glob.contains("**"))
                        .then(|| Path::new(glob).components().count() - root.components().count());
                    deepest = deepest.zip(depth).map(|(a, b)| a.max(b));
                }
                deepest
            })
            .collect();
        Ok(Selection {
            include: set("include", include)?,
            exclude: set("exclude", exclude)?,
            roots: kept,
            depths,
        })
    }

    /// Whether the source reads `path`.
    pub fn selects(&self, path: &Path) -> bool {
        !is_compressed(path) && self.include.is_match(path) && !self.exclude.is_match(path)
    }

    /// The directories under which every selected file lies: where to watch and rescan.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Each root with whether selected files lie below its top level: what to watch, and how
    /// deep (a write deeper down is no hint for this source).
    pub fn watches(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.roots
            .iter()
            .zip(&self.depths)
            .map(|(root, depth)| (root.as_path(), depth.is_none_or(|d| d > 1)))
    }

    /// Every selected file that exists now, with its metadata (a symbolic link's target's),
    /// walking only as deep under each root as the globs reach. Symbolic links to files are
    /// followed; links to directories are not (a `**` walk through them could loop). Directories
    /// and files that cannot be read are returned as errors, and the walk goes on.
    pub fn scan(&self) -> (Vec<(PathBuf, std::fs::Metadata)>, Vec<String>) {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        for (root, depth) in self.roots.iter().zip(&self.depths) {
            self.walk(root, *depth, &mut found, &mut errors);
        }
        (found, errors)
    }

    fn walk(
        &self,
        dir: &Path,
        depth: Option<usize>,
        found: &mut Vec<(PathBuf, std::fs::Metadata)>,
        errors: &mut Vec<String>,
    ) {
        if depth == Some(0) {
            return;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // A root that does not exist yet is watched for when it appears, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                errors.push(format!("{}: cannot list: {e}", dir.display()));
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                self.walk(&path, depth.map(|d| d - 1), found, errors);
            } else if (kind.is_file() || kind.is_symlink()) && self.selects(&path) {
                match std::fs::metadata(&path) {
                    Ok(md) if md.is_file() => found.push((path, md)),
                    Ok(_) => {}
                    // A dangling link, or a file deleted since it was listed.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => errors.push(format!("{}: {e}", path.display())),
                }
            }
        }
    }
}

/// Whether `path` names a compressed file (a rotated log gzipped, say), which is never read.
pub fn is_compressed(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| COMPRESSED.contains(&e))
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

    #[test]
    fn a_scan_walks_only_as_deep_as_the_globs_reach() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in [
            "a.log",
            "sub/b.log",
            "sub/deeper/c.log",
            "other/d.log",
            "a.log.1",
        ] {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x\n").unwrap();
        }
        std::os::unix::fs::symlink(d.join("sub/b.log"), d.join("link.log")).unwrap();
        std::os::unix::fs::symlink(d.join("missing"), d.join("dangling.log")).unwrap();
        let names = |include: &[String]| {
            let s = Selection::new(include, &[]).unwrap();
            let (found, errors) = s.scan();
            assert!(errors.is_empty(), "{errors:?}");
            let mut names: Vec<String> = found
                .iter()
                .map(|(p, _)| p.strip_prefix(d).unwrap().display().to_string())
                .collect();
            names.sort();
            names
        };
        let root = d.display();
        assert_eq!(names(&[format!("{root}/*.log")]), ["a.log", "link.log"]);
        assert_eq!(
            names(&[format!("{root}/sub/*/*.log"), format!("{root}/*.log")]),
            ["a.log", "link.log", "sub/deeper/c.log"]
        );
        assert_eq!(
            names(&[format!("{root}/**/*.log")]),
            [
                "a.log",
                "link.log",
                "other/d.log",
                "sub/b.log",
                "sub/deeper/c.log"
            ]
        );
        assert!(names(&[format!("{root}/nowhere/*.log")]).is_empty());
        let watches = |include: &[String]| {
            let s = Selection::new(include, &[]).unwrap();
            s.watches().map(|(_, deep)| deep).collect::<Vec<_>>()
        };
        assert_eq!(watches(&[format!("{root}/*.log")]), [false]);
        assert_eq!(watches(&[format!("{root}/*/*.log")]), [true]);
        assert_eq!(watches(&[format!("{root}/**/*.log")]), [true]);
    }

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
