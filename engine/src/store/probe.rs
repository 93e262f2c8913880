//! Before several instances share a store (DESIGN §15): does the object
//! store honour conditional writes? Every index.json rewrite relies on
//! them (a compare-and-swap), and a store that ignores the condition
//! (some S3 look-alikes accept `If-Match` and write anyway) would lose
//! tags exactly as zot #4337 does. Shared mode is refused unless each
//! answer below is the one the contract requires.

use bytes::Bytes;

use crate::driver::{Driver, DriverPath, DriverResult, ObjectVersion};
use crate::error::{StoreError, StoreResult};

/// Runs the probe on a scratch object named for `instance`, removed after.
pub(crate) async fn conditional_writes(driver: &dyn Driver, instance: &str) -> StoreResult<()> {
    let path = DriverPath::new(format!("_ocistore/probe/{instance}")).expect("valid");
    let outcome = run(driver, &path).await;
    driver.delete(&path).await?;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(wrong)) => Err(refused(driver, &wrong)),
        Err(e) => Err(refused(driver, &e.to_string())),
    }
}

fn refused(driver: &dyn Driver, why: &str) -> StoreError {
    StoreError::Denied {
        reason: format!(
            "the {} store does not honour conditional writes ({why}): refusing to share it \
             between instances",
            driver.name()
        ),
    }
}

/// `Ok(Err(what))` when the store answered, wrongly.
async fn run(driver: &dyn Driver, path: &DriverPath) -> DriverResult<Result<(), String>> {
    driver.delete(path).await?;
    let first = driver
        .put_if_version(path, Bytes::from_static(b"a"), None)
        .await?;
    let must_refuse: [(&str, Option<ObjectVersion>); 2] = [
        ("a create over an existing object", None),
        (
            "a swap expecting a version the object never had",
            Some(ObjectVersion::from_etag("never")),
        ),
    ];
    for (what, expected) in must_refuse {
        match driver
            .put_if_version(path, Bytes::from_static(b"x"), expected.as_ref())
            .await
        {
            Err(e) if e.is_precondition_failed() => {}
            Ok(_) => return Ok(Err(format!("{what} succeeded"))),
            Err(e) => return Err(e),
        }
    }
    let second = driver
        .put_if_version(path, Bytes::from_static(b"b"), Some(&first))
        .await?;
    let (data, version) = driver.get_versioned(path).await?;
    if &data[..] != b"b" || version != second {
        return Ok(Err(
            "a swap expecting the current version was not applied".into()
        ));
    }
    match driver
        .put_if_version(path, Bytes::from_static(b"c"), Some(&first))
        .await
    {
        Err(e) if e.is_precondition_failed() => Ok(Ok(())),
        Ok(_) => Ok(Err("a swap expecting a stale version succeeded".into())),
        Err(e) => Err(e),
    }
}
