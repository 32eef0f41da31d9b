//! The events of the course log, as parsed, borrowing from the line they came from.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// A UTC instant from the log, to the microsecond (Postgres' precision; nanoseconds are cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Calendar year.
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=31, valid for the month.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59 (no leap seconds in the log).
    pub second: u8,
    /// 0..=999_999.
    pub micros: u32,
}

impl Timestamp {
    /// Microseconds since the Unix epoch.
    pub fn unix_micros(&self) -> i64 {
        let days = days_from_civil(i64::from(self.year), i64::from(self.month), i64::from(self.day));
        let secs = days * 86_400 + i64::from(self.hour) * 3_600 + i64::from(self.minute) * 60 + i64::from(self.second);
        secs * 1_000_000 + i64::from(self.micros)
    }

    /// Builds a timestamp from microseconds since the epoch.
    pub fn from_unix_micros(micros: i64) -> Self {
        let secs = micros.div_euclid(1_000_000);
        let sub = micros.rem_euclid(1_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        Self {
            year: y as u16,
            month: m as u8,
            day: d as u8,
            hour: (rem / 3_600) as u8,
            minute: (rem % 3_600 / 60) as u8,
            second: (rem % 60) as u8,
            micros: sub,
        }
    }

    /// Writes the timestamp as Postgres `timestamptz` input (`2022-10-28 04:23:23.097000+00`).
    pub fn write_pg(&self, out: &mut Vec<u8>) {
        let mut buf = [0u8; 29];
        write_digits(&mut buf[0..4], u32::from(self.year));
        buf[4] = b'-';
        write_digits(&mut buf[5..7], u32::from(self.month));
        buf[7] = b'-';
        write_digits(&mut buf[8..10], u32::from(self.day));
        buf[10] = b' ';
        write_digits(&mut buf[11..13], u32::from(self.hour));
        buf[13] = b':';
        write_digits(&mut buf[14..16], u32::from(self.minute));
        buf[16] = b':';
        write_digits(&mut buf[17..19], u32::from(self.second));
        buf[19] = b'.';
        write_digits(&mut buf[20..26], self.micros);
        buf[26] = b'+';
        buf[27] = b'0';
        buf[28] = b'0';
        out.extend_from_slice(&buf);
    }

    /// The course log's own format (`2022-10-28T04:23:23.097000`).
    pub fn to_log_string(&self) -> String {
        let mut s = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        );
        if self.micros != 0 {
            let _infallible = write!(s, ".{:06}", self.micros);
        }
        s
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_log_string())
    }
}

fn write_digits(out: &mut [u8], mut value: u32) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// What a recommendation request in the log says the service answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecommendationResult<'a> {
    /// `status 200`: the movie ids the simulator parsed, best first.
    Movies(Vec<Cow<'a, str>>),
    /// Any other status: the error text the simulator logged.
    Error(&'a str),
}

/// One accepted line of the course log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// `GET /data/m/<movie>/<minute>.mpg`: one watched minute.
    Watch {
        /// When.
        ts: Timestamp,
        /// Who.
        user_id: i64,
        /// Course movie id (stray spaces removed, which allocates; otherwise borrowed).
        movie_id: Cow<'a, str>,
        /// Which minute of the movie.
        minute: i32,
    },
    /// `GET /rate/<movie>=<rating>`.
    Rate {
        /// When.
        ts: Timestamp,
        /// Who.
        user_id: i64,
        /// Course movie id (stray spaces removed, which allocates; otherwise borrowed).
        movie_id: Cow<'a, str>,
        /// 1..=scale.
        rating: i16,
    },
    /// `recommendation request <server>, status <code>, result: <...>, <N> ms`.
    Recommendation {
        /// When.
        ts: Timestamp,
        /// For whom.
        user_id: i64,
        /// The server the simulator called (`host:port`).
        server: &'a str,
        /// HTTP status as the simulator saw it (0 = no answer).
        status: i32,
        /// Ids or error text.
        result: RecommendationResult<'a>,
        /// Response time the simulator measured.
        latency_ms: i32,
    },
    /// `GET /create_account`.
    CreateAccount {
        /// When.
        ts: Timestamp,
        /// The new user.
        user_id: i64,
    },
}

impl Event<'_> {
    /// The event's time.
    pub fn ts(&self) -> Timestamp {
        match self {
            Event::Watch { ts, .. }
            | Event::Rate { ts, .. }
            | Event::Recommendation { ts, .. }
            | Event::CreateAccount { ts, .. } => *ts,
        }
    }

    /// The user the event is about.
    pub fn user_id(&self) -> i64 {
        match self {
            Event::Watch { user_id, .. }
            | Event::Rate { user_id, .. }
            | Event::Recommendation { user_id, .. }
            | Event::CreateAccount { user_id, .. } => *user_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_micros_round_trips_through_the_calendar() {
        for micros in [0i64, 1_666_931_003_097_000, 951_782_400_000_000, 4_102_444_799_999_999] {
            assert_eq!(Timestamp::from_unix_micros(micros).unix_micros(), micros);
        }
        let ts = Timestamp::from_unix_micros(1_666_931_003_097_000);
        assert_eq!(ts.to_log_string(), "2022-10-28T04:23:23.097000");
        let mut pg = Vec::new();
        ts.write_pg(&mut pg);
        assert_eq!(pg, b"2022-10-28 04:23:23.097000+00");
    }
}
