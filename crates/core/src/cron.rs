//! v1's backup schedule: a 5-field cron (`minute hour day month weekday`), each field `*` or
//! one exact integer (no ranges, steps or lists); weekday 0 is Sunday. Times are UTC.

/// A minute of a UTC day, in cron's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CivilTime {
    /// 0-59.
    pub minute: u32,
    /// 0-23.
    pub hour: u32,
    /// Day of the month, 1-31.
    pub day: u32,
    /// 1-12.
    pub month: u32,
    /// 0 (Sunday) - 6.
    pub weekday: u32,
}

impl CivilTime {
    /// The UTC time `secs` seconds after the Unix epoch (negative times clamp to the epoch).
    pub fn from_unix(secs: i64) -> Self {
        let secs = secs.max(0);
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400);
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        CivilTime {
            minute: u32::try_from(of_day / 60 % 60).unwrap_or(0),
            hour: u32::try_from(of_day / 3600).unwrap_or(0),
            day: u32::try_from(day).unwrap_or(1),
            month: u32::try_from(month).unwrap_or(1),
            // 1970-01-01 was a Thursday (4).
            weekday: u32::try_from((days + 4).rem_euclid(7)).unwrap_or(0),
        }
    }
}

/// Why an expression is not v1's cron.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields.
    #[error("cron {0:?}: want 5 fields (minute hour day month weekday)")]
    FieldCount(String),
    /// A field that is neither `*` nor an integer.
    #[error("cron {expr:?}: field {field:?} is not '*' or a number")]
    Field {
        /// The expression.
        expr: String,
        /// The field.
        field: String,
    },
}

/// Whether `expr` selects the minute `t`.
pub fn matches(expr: &str, t: CivilTime) -> Result<bool, CronError> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(CronError::FieldCount(expr.to_owned()));
    }
    let values = [t.minute, t.hour, t.day, t.month, t.weekday];
    let mut all = true;
    for (field, value) in fields.iter().zip(values) {
        if *field == "*" {
            continue;
        }
        let want: u32 = field
            .parse()
            .map_err(|_| CronError::Field { expr: expr.to_owned(), field: (*field).to_owned() })?;
        all &= want == value;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 16:30 UTC, a Monday.
    const MON: CivilTime = CivilTime { minute: 30, hour: 16, day: 7, month: 12, weekday: 1 };

    #[test]
    fn civil_time_of_unix_seconds() {
        let rows = [
            ("epoch", 0, CivilTime { minute: 0, hour: 0, day: 1, month: 1, weekday: 4 }),
            ("monday afternoon", 1_796_661_000, MON),
            (
                "leap day",
                1_709_164_800,
                CivilTime { minute: 0, hour: 0, day: 29, month: 2, weekday: 4 },
            ),
            (
                "new year's eve",
                1_767_225_599,
                CivilTime { minute: 59, hour: 23, day: 31, month: 12, weekday: 3 },
            ),
        ];
        for (name, secs, want) in rows {
            assert_eq!(CivilTime::from_unix(secs), want, "{name}");
        }
    }

    #[test]
    fn v1_cron_table() {
        let rows: [(&str, &str, Result<bool, ()>); 12] = [
            ("every minute", "* * * * *", Ok(true)),
            ("this minute", "30 * * * *", Ok(true)),
            ("another minute", "31 * * * *", Ok(false)),
            ("minute and hour", "30 16 * * *", Ok(true)),
            ("wrong hour", "30 3 * * *", Ok(false)),
            ("monday", "* * * * 1", Ok(true)),
            ("sunday", "* * * * 0", Ok(false)),
            ("full date", "30 16 7 12 1", Ok(true)),
            ("wrong month", "30 16 7 11 *", Ok(false)),
            ("four fields", "* * * *", Err(())),
            ("six fields", "* * * * * *", Err(())),
            ("not a number", "*/5 * * * *", Err(())),
        ];
        for (name, expr, want) in rows {
            assert_eq!(matches(expr, MON).map_err(|_| ()), want, "{name}: {expr}");
        }
    }
}
