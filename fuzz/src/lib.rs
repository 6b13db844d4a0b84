//! What the fuzz targets check, besides "never panics": a reference reader
//! for the line protocol queuewatch writes.

/// One line of line protocol read back: tag values and string fields,
/// unescaped, in order. Only what [`queuewatch::point::Point::write_line`]
/// emits is understood: plain measurement and keys, `key=value` tags,
/// fields that are numbers or double-quoted strings, a timestamp.
#[derive(Debug, PartialEq)]
pub struct ReadLine {
    pub measurement: String,
    pub tags: Vec<(String, String)>,
    pub string_fields: Vec<(String, String)>,
    pub time_ns: i64,
}

/// Reads `line` (without its newline) as InfluxDB does: in a tag value a
/// backslash escapes `,`, ` `, `=` and `\`; an unescaped space ends the tag
/// set; in a string field a backslash escapes `"` and `\`.
pub fn read_line(line: &str) -> Result<ReadLine, String> {
    if line.contains('\n') {
        return Err("a newline inside the line".into());
    }
    let mut chars = line.chars().peekable();
    let mut measurement = String::new();
    while let Some(&c) = chars.peek() {
        if c == ',' || c == ' ' {
            break;
        }
        measurement.push(c);
        chars.next();
    }
    let mut tags = Vec::new();
    while chars.peek() == Some(&',') {
        chars.next();
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) => key.push(c),
                None => return Err(format!("tag {key:?} without '='")),
            }
        }
        let mut value = String::new();
        loop {
            match chars.peek().copied() {
                Some('\\') => {
                    chars.next();
                    match chars.next() {
                        Some(c @ (',' | ' ' | '=' | '\\')) => value.push(c),
                        other => return Err(format!("tag {key:?}: unknown escape {other:?}")),
                    }
                }
                Some(',') | Some(' ') => break,
                Some('=') => return Err(format!("tag {key:?}: unescaped '='")),
                Some(c) => {
                    value.push(c);
                    chars.next();
                }
                None => return Err(format!("tag {key:?}: line ends in the tag set")),
            }
        }
        if value.is_empty() {
            return Err(format!("tag {key:?}: empty value"));
        }
        tags.push((key, value));
    }
    if chars.next() != Some(' ') {
        return Err("no space before the fields".into());
    }
    let mut string_fields = Vec::new();
    loop {
        let mut key = String::new();
        loop {
            match chars.next() {
                Some('=') => break,
                Some(c) => key.push(c),
                None => return Err(format!("field {key:?} without '='")),
            }
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => value.push(c),
                        // InfluxDB keeps a backslash before anything else as it is.
                        Some(c) => {
                            value.push('\\');
                            value.push(c);
                        }
                        None => return Err(format!("field {key:?}: unterminated string")),
                    },
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err(format!("field {key:?}: unterminated string")),
                }
            }
            string_fields.push((key.clone(), value));
        } else {
            let mut number = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' || c == ' ' {
                    break;
                }
                number.push(c);
                chars.next();
            }
            let digits = number.strip_suffix('i').unwrap_or(&number);
            if digits.parse::<f64>().map_or(true, |n| !n.is_finite()) {
                return Err(format!("field {key:?}: not a number: {number:?}"));
            }
        }
        match chars.next() {
            Some(',') => continue,
            Some(' ') => break,
            other => return Err(format!("after field {key:?}: {other:?}")),
        }
    }
    let time: String = chars.collect();
    let time_ns = time.parse().map_err(|_| format!("bad timestamp {time:?}"))?;
    Ok(ReadLine { measurement, tags, string_fields, time_ns })
}

/// What queuewatch documents it writes for `text`: newlines, which line
/// protocol cannot carry, become spaces.
pub fn expected_text(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
