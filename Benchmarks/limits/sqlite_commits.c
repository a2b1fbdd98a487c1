/* The raw single-row commit rate of SQLite on this disk, for runs without ../shared:
 * one INSERT of a ~280-byte row per transaction, in WAL mode.
 *
 *   sqlite_commits DB ROWS FULL|NORMAL   ->   rows_per_s=N
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void check(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: %s DB ROWS FULL|NORMAL\n", argv[0]); return 64; }
    long rows = atol(argv[2]);
    sqlite3 *db;
    remove(argv[1]);
    check(sqlite3_open(argv[1], &db), db, "open");
    char pragma[64];
    snprintf(pragma, sizeof pragma, "PRAGMA synchronous=%s", strcmp(argv[3], "FULL") == 0 ? "FULL" : "NORMAL");
    check(sqlite3_exec(db, "PRAGMA journal_mode=WAL", 0, 0, 0), db, "wal");
    check(sqlite3_exec(db, pragma, 0, 0, 0), db, "sync");
    check(sqlite3_exec(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, oid BLOB, v INTEGER, topic TEXT, state BLOB)", 0, 0, 0), db, "create");
    sqlite3_stmt *ins;
    check(sqlite3_prepare_v2(db, "INSERT INTO t (oid, v, topic, state) VALUES (randomblob(16), 1, 'Customer.registered', randomblob(280))", -1, &ins, 0), db, "prepare");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < rows; i++) {
        check(sqlite3_exec(db, "BEGIN", 0, 0, 0), db, "begin");
        check(sqlite3_step(ins), db, "insert");
        sqlite3_reset(ins);
        check(sqlite3_exec(db, "COMMIT", 0, 0, 0), db, "commit");
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("rows_per_s=%.1f\n", rows / s);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    return 0;
}
