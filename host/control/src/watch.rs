//! Reload when the configuration file or a plugin file changes. Editors and
//! deploy tools replace files in several steps (write, rename), so events are
//! gathered for a moment and answered with one reload.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Control;

/// How long to gather events before reloading.
const SETTLE: Duration = Duration::from_millis(50);

/// Watch the files a reload reads until the task is dropped.
pub(super) async fn watch(control: Arc<Control>) {
    let (events, mut changes) = mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !event.kind.is_access()
        {
            let _ = events.send(event.paths);
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            tracing::error!(
                "cannot watch files for changes (reload with SIGHUP or the admin API): {e}"
            );
            return;
        }
    };
    let (mut files, mut enabled) = control.files().await;
    let mut dirs = BTreeSet::new();
    loop {
        // Watch folders, not files: a file replaced by a rename is a new file.
        for dir in files.iter().filter_map(|f| f.parent()) {
            if dirs.insert(dir.to_owned())
                && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
            {
                tracing::warn!("cannot watch {}: {e}", dir.display());
            }
        }
        let Some(paths) = changes.recv().await else {
            return;
        };
        if !enabled {
            // A reload through SIGHUP or the admin API may have turned watching on.
            (files, enabled) = control.files().await;
        }
        if !enabled || !touches(&files, &paths) {
            continue;
        }
        tokio::time::sleep(SETTLE).await;
        while changes.try_recv().is_ok() {}
        tracing::info!("a watched file changed; reloading");
        // A failed reload is logged and counted by `reload` itself.
        let _ = control.reload().await;
        (files, enabled) = control.files().await;
    }
}

fn touches(files: &[PathBuf], paths: &[PathBuf]) -> bool {
    paths.iter().any(|p| files.iter().any(|f| f == p))
}
