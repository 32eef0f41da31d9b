//! Importers on the real course and MovieLens files.

use db::import::{self, catalog, movielens, users};
use db::testing::TestDb;

use crate::data::shared_data;

#[tokio::test]
async fn the_course_catalog_imports_once_and_reimports_as_unchanged() {
    let Some(data) = shared_data() else { return };
    let db = TestDb::new().await;
    let (movies, skipped) =
        catalog::read_catalog(&data.join("course/catalog/course_catalog_union.jsonl")).expect("read");
    assert_eq!((movies.len(), skipped.len()), (7_022, 0));

    let first = import::upsert_movies(&db.pool, &movies, "test").await.expect("import");
    let again = import::upsert_movies(&db.pool, &movies, "test").await.expect("reimport");

    assert_eq!((first.inserted, first.unchanged), (7_022, 0));
    assert_eq!((again.inserted, again.updated, again.unchanged), (0, 0, 7_022));
    let (title, genres, popularity): (String, Vec<String>, f64) = sqlx::query_as(
        "SELECT title, genres, popularity FROM movies WHERE movie_id = 'the+lord+of+the+rings+the+fellowship+of+the+ring+2001'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("lotr");
    assert!(title.starts_with("The Lord of the Rings"));
    assert!(genres.contains(&"Fantasy".to_string()) && popularity > 0.0);
}

#[tokio::test]
async fn raw_movie_api_answers_with_numbers_as_strings_import() {
    let Some(data) = shared_data() else { return };
    let db = TestDb::new().await;
    let (movies, skipped) =
        catalog::read_catalog(&data.join("course/catalog/cmu-f19-movie-api-responses.json")).expect("read");
    assert!(movies.len() > 2_700, "{} movies, {} skipped", movies.len(), skipped.len());
    let with_votes = movies.iter().filter(|m| m.vote_average.is_some() && m.popularity.is_some()).count();
    assert!(with_votes as f64 > 0.95 * movies.len() as f64, "numbers given as strings are read");

    let stats = import::upsert_movies(&db.pool, &movies, "api").await.expect("import");

    assert_eq!(stats.inserted as usize, movies.len());
}

#[tokio::test]
async fn course_users_import_from_api_json_and_csv() {
    let Some(data) = shared_data() else { return };
    let db = TestDb::new().await;
    for file in ["course/users/cmu-f19-user-api-responses.json", "course/users/cmu-f24-user_details.csv"] {
        let (list, skipped) = users::read_users(&data.join(file)).expect("read");
        assert!(list.len() > 1_000 && skipped == 0, "{file}: {} users, {skipped} skipped", list.len());
        users::upsert_users(&db.pool, &list, file).await.expect("import");
        let again = users::upsert_users(&db.pool, &list, file).await.expect("reimport");
        assert_eq!(again.inserted + again.updated, 0, "{file}");
    }
    let (age, occupation, gender): (i32, String, String) =
        sqlx::query_as("SELECT age, occupation, gender FROM users WHERE user_id = 43575")
            .fetch_one(&db.pool)
            .await
            .expect("user");
    assert_eq!((age, occupation.as_str(), gender.as_str()), (28, "executive/managerial", "M"));
}

#[test]
fn movielens_ids_agree_with_the_course_mapping() {
    let Some(data) = shared_data() else { return };
    let catalog = movielens::read_catalog(&movielens::MovieLensPaths::bundled()).expect("movielens");
    let agreement = movielens::mapping_agreement(&catalog, &data.join("course/catalog/course_to_ml-latest-small.csv"))
        .expect("mapping");
    let share = agreement.agree as f64 / agreement.total as f64;
    println!("course-id agreement: {}/{} = {:.1} %", agreement.agree, agreement.total, 100.0 * share);
    assert_eq!(agreement.total, 2_913);
    assert!(share > 0.93, "{share}: {:?}", agreement.examples);
}

#[tokio::test]
async fn the_default_dataset_loads_through_the_ingester_and_reloads_as_nothing() {
    let db = TestDb::new().await;
    let out = |args: &[&str]| {
        std::process::Command::new(crate::data::bin()).args(args).env("DATABASE_URL", &db.url).output().expect("run")
    };
    let first = out(&["load-default"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let second = out(&["load-default"]);
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(stdout.contains("inserted 0, updated 0, unchanged 9742"), "{stdout}");
    assert!(stdout.contains("ratings: 0 new events"), "{stdout}");

    let (events, ratings, scale): (i64, i64, i16) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM rating_events), (SELECT count(*) FROM ratings), (SELECT max(scale) FROM ratings)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    assert_eq!((events, ratings, scale), (100_836, 100_836, 10));
    let toy_story: i64 = sqlx::query_scalar("SELECT count(*) FROM ratings WHERE movie_id = 'toy+story+1995'")
        .fetch_one(&db.pool)
        .await
        .expect("toy story");
    assert_eq!(toy_story, 215, "MovieLens has 215 ratings of Toy Story");
}
