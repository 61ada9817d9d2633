//! The daily salts of cookieless visitor ids: a table of their own, rotated in the
//! transaction that reads them, so that no salt outlives its day.

pub(super) fn new_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 32];
    rand::fill(&mut salt[..]);
    salt
}

/// The salts' queries, for `sql_store_impl!`.
macro_rules! salt_impl {
    ($store:ty, $db:ty, $d:ident) => {
        impl $store {
            /// `EventStore::daily_salt`.
            async fn salt_of_day(
                &self,
                day: chrono::NaiveDate,
            ) -> Result<Vec<u8>, $crate::store::StoreError> {
                let day = day.format("%Y-%m-%d").to_string();
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM visitor_salts WHERE day < $1")
                    .bind(&day)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO visitor_salts (day, salt) VALUES ($1, $2) \
                     ON CONFLICT (day) DO NOTHING",
                )
                .bind(&day)
                .bind($crate::store::new_salt())
                .execute(&mut *tx)
                .await?;
                let (salt,): (Vec<u8>,) =
                    sqlx::query_as("SELECT salt FROM visitor_salts WHERE day = $1")
                        .bind(&day)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(salt)
            }
        }
    };
}
pub(crate) use salt_impl;
