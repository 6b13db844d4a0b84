//! Device logins made and revoked with the deploy kit's own script,
//! `deploy/mosquitto/device-login`, in a test broker's password and ACL files.

use std::path::Path;
use std::process::Command;

/// Makes the login `office.device` with a new password: its user name and password.
pub fn add_device(password_file: &Path, acl_file: &Path, office: &str, device: &str) -> (String, String) {
    let output = device_login(password_file, acl_file, &["add", office, device]);
    let field = |name: &str| {
        output
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in device-login's output:\n{output}"))
            .to_string()
    };
    (field("user"), field("password"))
}

/// Removes the login `user`.
pub fn revoke_device(password_file: &Path, acl_file: &Path, user: &str) {
    device_login(password_file, acl_file, &["revoke", user]);
}

/// Runs the script on these files; its standard output. Fails the test if it fails.
fn device_login(password_file: &Path, acl_file: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/mosquitto/device-login");
    let output = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("QUEUEWATCH_MOSQUITTO_PASSWD", password_file)
        .env("QUEUEWATCH_MOSQUITTO_ACL", acl_file)
        .output()
        .unwrap_or_else(|error| panic!("{}: {error}", script.display()));
    assert!(
        output.status.success(),
        "device-login {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}
