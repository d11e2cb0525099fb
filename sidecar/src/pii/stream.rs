//! The filter on a stream: text is released only once the filter has seen every entity in it
//! whole, so an entity still arriving never leaves in part.

use super::{Blocked, PiiFilter};

/// How far behind a stream the PII filter keeps text back (bytes): emails (at most 254), card and
/// phone numbers, keys and most URLs are shorter, so one still arriving never leaves in part.
pub const STREAM_HOLD_BACK: usize = 512;

impl PiiFilter {
    /// For a stream: the part of `pending` (text received, not yet released) that may leave now,
    /// masked, and how many bytes of `pending` it covers. The last `hold_back` bytes stay, and so
    /// does a match reaching into them: an entity up to `hold_back` bytes long that is still
    /// arriving never leaves in part. `hold_back` 0 releases everything (the end of a stream).
    ///
    /// # Errors
    ///
    /// [`Blocked`] when a `BLOCK` rule matches anywhere in `pending`, held-back text included.
    pub fn releasable(&self, pending: &str, hold_back: usize) -> Result<(String, usize), Blocked> {
        if self.rules.is_empty() {
            return Ok((pending.to_owned(), pending.len()));
        }
        let hits = self.anonymize_hits(pending)?;
        let mut cut = pending.len().saturating_sub(hold_back);
        while !pending.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(straddling) = hits.iter().find(|h| h.start < cut && h.end > cut) {
            cut = straddling.start;
        }
        // The mask of the next entity can complete one that ends at the cut (see `settle`): that
        // one waits too, to leave with the mask that completes it.
        if let Some(next) = hits.iter().find(|h| h.end > cut)
            && let (Some(before), Some(rule)) =
                (pending.get(..next.start), self.rules.get(next.rule))
            && let Ok(completed) = self.anonymize_hits(&format!("{before}{}", rule.mask))
            && let Some(crossing) = completed.iter().find(|h| h.start < cut && h.end > cut)
        {
            cut = crossing.start;
        }
        Ok((self.settle(self.mask(pending, &hits, cut)), cut))
    }
}
