//! Saved jobs: the stored form of permanent jobs (`save`), and the jobs that could not be
//! restored at start.

use super::*;

impl<E: Env> Module<E> {
    /// How `save` would write the job, if it would.
    pub(super) fn saved_form(&self, job: &Job) -> Option<SavedJob> {
        let s = job.s.lock();
        let kept = !matches!(
            s.state,
            JobState::Cancelled | JobState::Cancelling | JobState::Stopping | JobState::Failed | JobState::Finished
        );
        (job.def.permanent && kept).then(|| SavedJob {
            id: job.id.lock().to_string(),
            command: job.command.clone(),
            concurrency: s.concurrency,
            created: job.created,
            rate: job.rate.rate(),
        })
    }

    /// `save`: the module's settings and its permanent jobs (not cancelled, stopping,
    /// failed or finished) as text for the pool to store. Call [`Module::saved`] once it is
    /// stored.
    pub fn save_text(&self) -> (String, Vec<SavedJob>) {
        let (jobs, unrestored) = {
            let jobs = self.jobs.lock();
            (jobs.list.clone(), jobs.unrestored.iter().map(|u| u.saved.clone()).collect::<Vec<_>>())
        };
        let mut saved: Vec<SavedJob> = jobs.iter().filter_map(|j| self.saved_form(j)).collect();
        // Saved jobs that could not be restored stay saved, as they were.
        saved.extend(unrestored);
        let mut text = format!(
            "{SAVE_HEADER}\nconcurrency-default {}\nrefresh-default {}\n",
            self.default_concurrency(),
            self.default_refresh()
        );
        for j in &saved {
            text.push_str("job ");
            text.push_str(&serde_json::to_string(j).expect("a saved job always serialises"));
            text.push('\n');
        }
        (text, saved)
    }

    /// Keeps a saved job that could not be recreated at start (see `Jobs::unrestored`): `ls`
    /// lists it, `save` writes it again, `cancel` drops it.
    pub fn keep_unrestored(&self, saved: SavedJob, reason: String) {
        let mut jobs = self.jobs.lock();
        jobs.unrestored.retain(|u| u.saved.id != saved.id);
        jobs.unrestored.push(Unrestored { saved, reason });
    }

    /// How many saved jobs are kept without running (they could not be restored).
    pub fn unrestored_count(&self) -> usize {
        self.jobs.lock().unrestored.len()
    }

    /// Records what is stored now (after `save`, or what a restart found).
    pub fn saved(&self, jobs: Vec<SavedJob>) {
        let saved: HashMap<String, SavedJob> = jobs.into_iter().map(|j| (j.id.clone(), j)).collect();
        self.jobs.lock().dropped.retain(|d| saved.contains_key(&d.id));
        *self.saved.lock() = saved;
    }

    /// Reads what [`Module::save_text`] wrote. A line that cannot be read is an `Err` with
    /// the reason; the others are still read.
    pub fn parse_saved(text: &str) -> Result<SavedSet, String> {
        let mut lines = text.lines();
        match lines.next() {
            Some(SAVE_HEADER) => {}
            other => return Err(format!("not a saved migration set (first line {other:?})")),
        }
        let mut set = SavedSet::default();
        for (n, line) in lines.enumerate() {
            let at = n + 2;
            if let Some(v) = line.strip_prefix("concurrency-default ") {
                match v.parse::<usize>() {
                    Ok(c) => set.default_concurrency = Some(c),
                    Err(_) => set.jobs.push(Err(format!("line {at}: bad concurrency-default {v:?}"))),
                }
            } else if let Some(v) = line.strip_prefix("refresh-default ") {
                match v.parse::<u64>() {
                    Ok(r) if r >= 1 => set.default_refresh = Some(r),
                    _ => set.jobs.push(Err(format!("line {at}: bad refresh-default {v:?}"))),
                }
            } else if let Some(json) = line.strip_prefix("job ") {
                set.jobs.push(serde_json::from_str(json).map_err(|e| format!("line {at}: unreadable job ({e})")));
            } else if !line.is_empty() {
                set.jobs.push(Err(format!("line {at}: unknown line {line:?}")));
            }
        }
        Ok(set)
    }
}
