//! Runs the fuzz targets without libFuzzer, on any toolchain: replays every file in
//! `seeds/<target>/` and `corpus/<target>/`, then a number of generated inputs (random bytes
//! and mutated seeds and files).
//!
//! ```text
//! cargo run --release --bin replay -- [TARGET...] [--iterations N] [--seed S] [--max-len N]
//! cargo run --release --bin replay -- --write-seeds
//! ```
//!
//! Each target runs in a child process that announces the index of every input before trying
//! it. A failure that cannot be caught in-process (an allocation too large to satisfy aborts, a
//! stack overflow kills) still leaves the parent knowing the input: the inputs are a
//! deterministic function of the files and the seed, so the parent regenerates it, saves it to
//! `artifacts/<target>/crash-<hash>` and fails the run.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use outpost_fuzz::{Rng, TARGETS, generate, seeds, target};

const USAGE: &str = "usage: replay [TARGET...] [--iterations N] [--seed S] [--max-len N]
       replay --write-seeds";

#[derive(Debug, Clone)]
struct Options {
    targets: Vec<String>,
    iterations: u64,
    seed: u64,
    max_len: usize,
    write_seeds: bool,
    /// Internal: run one target in this process, announcing each input on stdout.
    child: bool,
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let result = if options.write_seeds {
        write_seeds(root)
    } else if options.child {
        child(root, &options)
    } else {
        options
            .targets
            .iter()
            .try_for_each(|name| supervise(root, name, &options))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        targets: Vec::new(),
        iterations: 300_000,
        seed: 1,
        max_len: 4096,
        write_seeds: false,
        child: false,
    };
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        match arg.as_str() {
            "--iterations" => options.iterations = number(&value("--iterations")?)?,
            "--seed" => options.seed = number(&value("--seed")?)?,
            "--max-len" => options.max_len = number(&value("--max-len")?)?,
            "--write-seeds" => options.write_seeds = true,
            "--child" => options.child = true,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
            name if target(name).is_some() => options.targets.push(name.to_owned()),
            name => return Err(format!("unknown target `{name}`")),
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.iter().map(|(n, _)| (*n).to_owned()).collect();
    }
    Ok(options)
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("`{text}` is not a number"))
}

/// Writes the seed inputs of every target to `seeds/<target>/<name>`.
fn write_seeds(root: &Path) -> Result<(), String> {
    for (name, _) in TARGETS {
        let dir = root.join("seeds").join(name);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (seed, bytes) in seeds(name) {
            let path = dir.join(seed);
            fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            println!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
    }
    Ok(())
}

/// The inputs of one run, in order: the seed and corpus files, then generated inputs.
struct Inputs {
    files: std::vec::IntoIter<(PathBuf, Vec<u8>)>,
    pool: Vec<Vec<u8>>,
    rng: Rng,
    generated: u64,
    iterations: u64,
    max_len: usize,
}

impl Inputs {
    fn new(root: &Path, name: &str, options: &Options) -> Result<(Self, usize), String> {
        let mut files = files_in(&root.join("seeds").join(name))?;
        files.extend(files_in(&root.join("corpus").join(name))?);
        let mut pool: Vec<Vec<u8>> = seeds(name).into_iter().map(|(_, b)| b).collect();
        pool.extend(files.iter().map(|(_, b)| b.clone()));
        let count = files.len();
        let inputs = Inputs {
            files: files.into_iter(),
            pool,
            rng: Rng::new(options.seed),
            generated: 0,
            iterations: options.iterations,
            max_len: options.max_len,
        };
        Ok((inputs, count))
    }
}

impl Iterator for Inputs {
    /// A description of the input, and the input.
    type Item = (String, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some((path, bytes)) = self.files.next() {
            return Some((path.display().to_string(), bytes));
        }
        if self.generated == self.iterations {
            return None;
        }
        let what = format!("generated input {}", self.generated);
        self.generated += 1;
        Some((what, generate(&mut self.rng, &self.pool, self.max_len)))
    }
}

/// The files of `dir`, sorted; none if it does not exist.
fn files_in(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((p, bytes))
        })
        .collect()
}

/// The child's side: runs every input of the one target, printing `<index>` before each and
/// `done <files> <accepted>` at the end.
fn child(root: &Path, options: &Options) -> Result<(), String> {
    let name = options.targets.first().ok_or("no target")?;
    let run = target(name).ok_or("unknown target")?;
    let (inputs, files) = Inputs::new(root, name, options)?;
    let mut out = std::io::stdout().lock();
    let mut accepted = 0u64;
    for (index, (_, data)) in inputs.enumerate() {
        // Flushed before the attempt, so the parent knows the input even if the process dies.
        writeln!(out, "{index}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
        accepted += u64::from(run(&data));
    }
    writeln!(out, "done {files} {accepted}").map_err(|e| e.to_string())
}

/// The parent's side: runs one target in a child and, if it dies, saves the input it died on.
fn supervise(root: &Path, name: &str, options: &Options) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut child = Command::new(exe)
        .args([name, "--child"])
        .args(["--iterations", &options.iterations.to_string()])
        .args(["--seed", &options.seed.to_string()])
        .args(["--max-len", &options.max_len.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the {name} runner: {e}"))?;
    let stdout = child.stdout.take().ok_or("the runner has no stdout")?;
    let mut last: Option<usize> = None;
    let mut summary = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading the {name} runner: {e}"))?;
        if let Some(rest) = line.strip_prefix("done ") {
            summary = Some(rest.to_owned());
        } else if let Ok(index) = line.parse() {
            last = Some(index);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the {name} runner: {e}"))?;
    match (status.success(), summary) {
        (true, Some(summary)) => {
            let mut parts = summary.split(' ');
            let files = parts.next().unwrap_or("?");
            let accepted = parts.next().unwrap_or("?");
            println!(
                "{name}: {files} files and {} generated inputs (seed {}): {accepted} decoded, no failure",
                options.iterations, options.seed
            );
            Ok(())
        }
        _ => {
            let Some(index) = last else {
                return Err(format!(
                    "{name}: the runner failed ({status}) before any input"
                ));
            };
            let (mut inputs, _) = Inputs::new(root, name, options)?;
            let (what, data) = inputs
                .nth(index)
                .ok_or_else(|| format!("{name}: input {index} cannot be regenerated"))?;
            let saved = save(root, name, &data);
            Err(format!(
                "{name}: {what} ({} bytes) crashed the target ({status}); {saved}",
                data.len()
            ))
        }
    }
}

/// Saves a failing input as `artifacts/<target>/crash-<hash>`, as cargo fuzz names them.
fn save(root: &Path, name: &str, data: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    data.hash(&mut hasher);
    let dir = root.join("artifacts").join(name);
    let path = dir.join(format!("crash-{:016x}", hasher.finish()));
    fs::create_dir_all(&dir)
        .and_then(|()| fs::write(&path, data))
        .map(|()| format!("saved to {}", path.display()))
        .unwrap_or_else(|e| format!("could not save it to {}: {e}", path.display()))
}
