/*
 * Tests for common/config: a sample table with every row type, good files,
 * defaults, and bad files as fixtures (tests/fixtures/config/NAME.json with
 * NAME.expect: the error's short name, then the exact message after the
 * fixture directory), plus units, printing and the no-half-load rule.
 */
#include "common/config.h"
#include "common/err.h"
#include "tests/harness.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

enum prio { PRIO_ONLINE = 10, PRIO_BATCH = 20, PRIO_BEST_EFFORT = 30 };

struct tcfg {
	int untouched; /* not in the table: a load must keep it */
	struct mer_strlist endpoints;
	int64_t etcd_timeout_ms;
	char *etcd_password;
	char *etcd_ca_file;
	char *listen;
	int64_t workers;
	int64_t max_message;
	bool tls;
	char *cert_file;
	double keepalive;
	double max_fraction;
	int prio;
	struct mer_strlist labels;
	char *site_name;
	json_t *pools;
};

static const struct mer_cfg_enum prio_names[] = {
    {"online", PRIO_ONLINE},
    {"batch", PRIO_BATCH},
    {"best-effort", PRIO_BEST_EFFORT},
    {NULL, 0},
};

static const char *check_site_name(const void *field, const void *cfg,
				   char *msg, size_t n)
{
	const char *s = *(char *const *)field;

	(void)cfg;
	for (const char *p = s; p && *p; p++) {
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
		      *p == '-')) {
			snprintf(msg, n,
				 "'%c' is not allowed: use lower-case letters, "
				 "digits and '-'",
				 *p);
			return msg;
		}
	}
	return NULL;
}

/* Cross-field: TLS on the link needs a certificate. */
static const char *check_link_tls(const void *field, const void *cfg, char *msg,
				  size_t n)
{
	const struct tcfg *c = cfg;

	(void)msg;
	(void)n;
	if (*(const bool *)field && !c->cert_file)
		return "needs link.cert_file";
	return NULL;
}

/* The caller's own check of a nested structure, with exact positions. */
static int check_pools(const struct mer_json_doc *doc, const char *path,
		       const json_t *v, const void *cfg, char *err,
		       size_t errlen)
{
	char p[128];
	size_t i;
	json_t *pool;

	(void)cfg;
	json_array_foreach(v, i, pool)
	{
		json_t *gpus = json_object_get(pool, "gpus");
		if (!json_is_string(json_object_get(pool, "name"))) {
			snprintf(p, sizeof(p), "%s[%zu]", path, i);
			mer_json_doc_errf(doc, p, err, errlen,
					  "a pool needs a name");
			return MER_EINVAL;
		}
		if (!json_is_integer(gpus) || json_integer_value(gpus) < 0) {
			snprintf(p, sizeof(p), "%s[%zu].gpus", path, i);
			mer_json_doc_errf(doc, p, err, errlen,
					  "must be a non-negative integer");
			return MER_EINVAL;
		}
	}
	return 0;
}

static const struct mer_cfg_row rows[] = {
    {MER_CFG_ROW_STRLIST("etcd.endpoints", struct tcfg, endpoints, 1, 4, NULL),
     .flags = MER_CFG_REQUIRED, .help = "etcd client URLs"},
    {MER_CFG_ROW_DURATION("etcd.timeout", struct tcfg, etcd_timeout_ms, 1,
			  5 * 60 * 1000, "5s")},
    {MER_CFG_ROW_STRING("etcd.password", struct tcfg, etcd_password, 0, 0,
			NULL),
     .flags = MER_CFG_SECRET},
    {MER_CFG_ROW_PATH("etcd.tls.ca_file", struct tcfg, etcd_ca_file, NULL),
     .flags = MER_CFG_READABLE},
    {MER_CFG_ROW_STRING("link.listen", struct tcfg, listen, 1, 64,
			"127.0.0.1:7400")},
    {MER_CFG_ROW_INT64("link.workers", struct tcfg, workers, 1, 256, "4")},
    {MER_CFG_ROW_SIZE("link.max_message", struct tcfg, max_message, 1024,
		      64 << 20, "1MiB")},
    {MER_CFG_ROW_BOOL("link.tls", struct tcfg, tls, "false"),
     .validate = check_link_tls},
    {MER_CFG_ROW_PATH("link.cert_file", struct tcfg, cert_file, NULL),
     .flags = MER_CFG_MUST_EXIST},
    {MER_CFG_ROW_DOUBLE("link.keepalive", struct tcfg, keepalive, 0, 0, "10")},
    {MER_CFG_ROW_DOUBLE("share.max_fraction", struct tcfg, max_fraction, 0.0,
			1.0, "0.5")},
    {MER_CFG_ROW_ENUM("jobs.default_priority", struct tcfg, prio, prio_names,
		      "batch")},
    {MER_CFG_ROW_STRLIST("jobs.labels", struct tcfg, labels, 0, 0,
			 "[\"tier=1\"]")},
    {MER_CFG_ROW_STRING("site.name", struct tcfg, site_name, 1, 63, NULL),
     .flags = MER_CFG_REQUIRED, .validate = check_site_name},
    {MER_CFG_ROW_JSON("site.pools", struct tcfg, pools, "[]"),
     .flags = MER_CFG_JSON_ARRAY, .check_json = check_pools},
};

static const struct mer_cfg_table table = MER_CFG_TABLE(struct tcfg, rows);

static char fixture_dir[512];

static const char *fixtures(void)
{
	const char *top = getenv("MERIDIAN_TOP");

	snprintf(fixture_dir, sizeof(fixture_dir), "%s/tests/fixtures/config",
		 top && *top ? top : ".");
	return fixture_dir;
}

static int load_fixture(const char *name, struct tcfg *c, char *err,
			size_t errlen)
{
	char path[768];

	snprintf(path, sizeof(path), "%s/%s", fixtures(), name);
	return mer_cfg_load_file(&table, path, c, err, errlen);
}

static void test_table_is_sound(void)
{
	char err[256];

	T_OK(mer_cfg_table_check(&table, err, sizeof(err)));
}

static void test_good_file(void)
{
	struct tcfg c = {.untouched = 42};
	char err[512];

	T_OK(load_fixture("good.json", &c, err, sizeof(err)));
	T_EQ_INT(c.untouched, 42);
	T_EQ_INT(c.endpoints.n, 2);
	T_EQ_STR(c.endpoints.v[0], "http://127.0.0.1:2379");
	T_EQ_STR(c.endpoints.v[1], "http://127.0.0.1:22379");
	T_EQ_INT(c.etcd_timeout_ms, 90000);
	T_EQ_STR(c.etcd_password, "hunter2-secret");
	T_EQ_STR(c.etcd_ca_file, "/dev/null");
	T_EQ_STR(c.listen, "0.0.0.0:7400");
	T_EQ_INT(c.workers, 16);
	T_EQ_INT(c.max_message, 1572864);
	T_EXPECT(c.tls);
	T_EQ_STR(c.cert_file, "/dev/null");
	T_EXPECT(c.keepalive == 2.5);
	T_EXPECT(c.max_fraction == 0.75);
	T_EQ_INT(c.prio, PRIO_BEST_EFFORT);
	T_EQ_INT(c.labels.n, 0); /* [] replaces the default list */
	T_EXPECT(c.labels.v == NULL);
	T_EQ_STR(c.site_name, "cn-east-1a");
	T_ASSERT(json_is_array(c.pools));
	T_EQ_INT(json_array_size(c.pools), 2);
	T_EQ_INT(json_integer_value(
		     json_object_get(json_array_get(c.pools, 0), "gpus")),
		 64);
	mer_cfg_free(&table, &c);
	T_EXPECT(c.endpoints.v == NULL && c.endpoints.n == 0);
	T_EXPECT(c.listen == NULL && c.pools == NULL);
	mer_cfg_free(&table, &c); /* twice is harmless */
	mer_cfg_free(&table, NULL);
}

static void test_defaults(void)
{
	struct tcfg c;
	char err[512];

	memset(&c, 0, sizeof(c));
	T_OK(load_fixture("minimal.json", &c, err, sizeof(err)));
	T_EQ_INT(c.endpoints.n, 1);
	T_EQ_INT(c.etcd_timeout_ms, 5000);
	T_EXPECT(c.etcd_password == NULL);
	T_EXPECT(c.etcd_ca_file == NULL);
	T_EQ_STR(c.listen, "127.0.0.1:7400");
	T_EQ_INT(c.workers, 4);
	T_EQ_INT(c.max_message, 1 << 20);
	T_EXPECT(!c.tls);
	T_EXPECT(c.keepalive == 10.0);
	T_EXPECT(c.max_fraction == 0.5);
	T_EQ_INT(c.prio, PRIO_BATCH);
	T_ASSERT(c.labels.n == 1);
	T_EQ_STR(c.labels.v[0], "tier=1");
	T_EQ_STR(c.site_name, "s1");
	T_EXPECT(json_is_array(c.pools) && json_array_size(c.pools) == 0);
	mer_cfg_free(&table, &c);

	/* Defaults alone, without the required rows. */
	memset(&c, 0, sizeof(c));
	T_OK(mer_cfg_defaults(&table, &c, err, sizeof(err)));
	T_EQ_INT(c.workers, 4);
	T_EXPECT(c.site_name == NULL && c.endpoints.n == 0);
	mer_cfg_free(&table, &c);
}

/*
 * Every NAME.expect under the fixture directory: line 1 the error's short
 * name (mer_errname), line 2 the message after "<fixture dir>/".
 */
static int read_expect(const char *path, char *code, size_t cn, char *msg,
		       size_t mn)
{
	FILE *f = fopen(path, "r");
	int ok;

	if (!f)
		return -1;
	ok = fgets(code, (int)cn, f) && fgets(msg, (int)mn, f);
	fclose(f);
	if (!ok)
		return -1;
	code[strcspn(code, "\n")] = '\0';
	msg[strcspn(msg, "\n")] = '\0';
	return 0;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_bad_files(void)
{
	char *names[128];
	size_t n = 0;
	struct dirent *de;
	DIR *d = opendir(fixtures());

	T_ASSERT(d != NULL);
	while ((de = readdir(d)) != NULL && n < 128) {
		size_t l = strlen(de->d_name);
		if (l > 7 && strcmp(de->d_name + l - 7, ".expect") == 0)
			names[n++] = strndup(de->d_name, l - 7);
	}
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmp_names);
	/* Guards against a wrong directory passing with no cases. */
	T_EXPECT(n >= 40);

	for (size_t i = 0; i < n; i++) {
		char path[768], code[64], msg[1024], want[1536], err[1024];
		struct tcfg c;
		int rv;

		snprintf(path, sizeof(path), "%s/%s.expect", fixtures(),
			 names[i]);
		if (read_expect(path, code, sizeof(code), msg, sizeof(msg))) {
			t_fail(__FILE__, __LINE__, "%s: unreadable", path);
			continue;
		}
		struct tcfg before;
		memset(&c, 0x5a, sizeof(c));
		memcpy(&before, &c, sizeof(c));
		snprintf(path, sizeof(path), "%s.json", names[i]);
		rv = load_fixture(path, &c, err, sizeof(err));
		snprintf(want, sizeof(want), "%s/%s", fixtures(), msg);
		if (strcmp(mer_errname(rv), code) != 0 ||
		    strcmp(err, want) != 0)
			t_fail(__FILE__, __LINE__,
			       "%s:\n      got  %s %s\n      want %s %s",
			       names[i], mer_errname(rv), err, code, want);
		/* Nothing of a bad file reaches the struct. */
		if (memcmp(&c, &before, sizeof(c)) != 0)
			t_fail(__FILE__, __LINE__, "%s: struct changed",
			       names[i]);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
}

static void test_no_half_load(void)
{
	struct tcfg c = {.untouched = 7}, saved;
	char err[512];
	/* Every row but the last is fine and would be set first. */
	const char *bad = "{\"etcd\": {\"endpoints\": [\"a\", \"b\"], "
			  "\"timeout\": \"1s\"}, \"link\": {\"workers\": 9, "
			  "\"listen\": \"x:1\"}, \"site\": {\"name\": \"ok\", "
			  "\"pools\": [{\"name\": \"p\", \"gpus\": -3}]}}";

	T_OK(load_fixture("good.json", &c, err, sizeof(err)));
	memcpy(&saved, &c, sizeof(c));
	T_EQ_INT(mer_cfg_load_string(&table, "reload", bad, strlen(bad), &c,
				     err, sizeof(err)),
		 MER_EINVAL);
	T_EQ_STR(err, "reload:1:150: site.pools[0].gpus: must be a "
		      "non-negative integer");
	T_ASSERT(memcmp(&c, &saved, sizeof(c)) == 0);
	/* The old values are still whole and usable. */
	T_EQ_STR(c.listen, "0.0.0.0:7400");
	T_EQ_INT(c.workers, 16);
	T_EQ_STR(c.endpoints.v[1], "http://127.0.0.1:22379");

	/* A reload: load into a fresh copy, then free the old one. */
	struct tcfg next = {.untouched = c.untouched};
	const char *good = "{\"etcd\": {\"endpoints\": [\"a\"]}, "
			   "\"site\": {\"name\": \"two\"}}";
	T_OK(mer_cfg_load_string(&table, "reload", good, strlen(good), &next,
				 err, sizeof(err)));
	mer_cfg_free(&table, &c);
	c = next;
	T_EQ_STR(c.site_name, "two");
	T_EQ_INT(c.untouched, 7);
	mer_cfg_free(&table, &c);
}

static void test_string_sources(void)
{
	struct tcfg c = {0};
	char err[512];
	const char *t = "{\"etcd\": {\"endpoints\": [\"a\"]}, \"site\": "
			"{\"name\": \"x\", \"bogus\": 1}}";

	T_EQ_INT(mer_cfg_load_string(&table, "request body", t, strlen(t), &c,
				     err, sizeof(err)),
		 MER_EINVAL);
	T_EQ_STR(err, "request body:1:54: site.bogus: unknown key 'bogus' "
		      "(known keys: name, pools)");
	T_EQ_INT(mer_cfg_load_string(&table, "request body", "{", 1, &c, err,
				     sizeof(err)),
		 MER_EPARSE);
	T_EQ_STR(err, "request body:1:1: string or '}' expected near end of "
		      "file");

	/* A document parsed by the caller (the API path). */
	struct mer_json_doc doc;
	const char *good = "{\"etcd\": {\"endpoints\": [\"e\"]}, \"site\": "
			   "{\"name\": \"d\"}}";
	T_OK(mer_json_doc_parse("body", good, strlen(good), 0, 0, &doc, err,
				sizeof(err)));
	T_OK(mer_cfg_load_doc(&table, &doc, &c, err, sizeof(err)));
	mer_json_doc_free(&doc);
	T_EQ_STR(c.endpoints.v[0], "e");
	mer_cfg_free(&table, &c);

	/* Unknown keys with odd characters are quoted safely. */
	const char *odd = "{\"etcd\": {\"endpoints\": [\"a\"]}, \"site\": "
			  "{\"name\": \"x\"}, \"a.b\\n\": 1}";
	T_EQ_INT(mer_cfg_load_string(&table, "odd", odd, strlen(odd), &c, err,
				     sizeof(err)),
		 MER_EINVAL);
	T_EQ_STR(err, "odd:1:55: [\"a.b\\x0a\"]: unknown key 'a.b\\x0a' (known "
		      "keys: etcd, link, share, jobs, site)");
}

static void test_missing_file(void)
{
	struct tcfg c = {0};
	char err[512];

	T_EQ_INT(load_fixture("no-such-file.json", &c, err, sizeof(err)),
		 MER_EIO);
	T_CONTAINS(err, "no-such-file.json: No such file or directory");
}

static void test_readable_check(void)
{
	char path[] = "/tmp/mer_cfg_test.XXXXXX";
	char text[256], err[512];
	struct tcfg c = {0};
	int fd = mkstemp(path);

	T_ASSERT(fd >= 0);
	close(fd);
	snprintf(text, sizeof(text),
		 "{\"etcd\": {\"endpoints\": [\"a\"], \"tls\": {\"ca_file\": "
		 "\"%s\"}}, \"site\": {\"name\": \"x\"}}",
		 path);
	if (geteuid() != 0) {
		T_EXPECT(chmod(path, 0) == 0);
		T_EQ_INT(mer_cfg_load_string(&table, "t", text, strlen(text),
					     &c, err, sizeof(err)),
			 MER_EINVAL);
		T_CONTAINS(err, "etcd.tls.ca_file: '");
		T_CONTAINS(err, "' cannot be read: Permission denied");
		T_EXPECT(chmod(path, 0600) == 0);
	}
	T_OK(mer_cfg_load_string(&table, "t", text, strlen(text), &c, err,
				 sizeof(err)));
	T_EQ_STR(c.etcd_ca_file, path);
	mer_cfg_free(&table, &c);
	unlink(path);
}

struct unit_case {
	const char *text;
	int rv;
	int64_t value;
};

static void test_durations(void)
{
	static const struct unit_case cases[] = {
	    {"250ms", 0, 250},
	    {"30s", 0, 30000},
	    {"5m", 0, 300000},
	    {"1h", 0, 3600000},
	    {"2d", 0, 172800000},
	    {"1h30m", 0, 5400000},
	    {"1.5s", 0, 1500},
	    {"0.25s", 0, 250},
	    {".5s", 0, 500},
	    {"1.500s", 0, 1500},
	    {"0s", 0, 0},
	    {"1m1s1ms", 0, 61001},
	    {"0.5ms", MER_EINVAL, 0},
	    {"30", MER_EINVAL, 0},
	    {"", MER_EINVAL, 0},
	    {"s", MER_EINVAL, 0},
	    {"5x", MER_EINVAL, 0},
	    {"-5s", MER_EINVAL, 0},
	    {"5 s", MER_EINVAL, 0},
	    {"1.s", MER_EINVAL, 0},
	    {"1..5s", MER_EINVAL, 0},
	    {"106751991168d", MER_ETOOBIG, 0},
	    {"106751991167d", 0, 9223372036828800000},
	    {"99999999999999999999ms", MER_ETOOBIG, 0},
	    {"106751991167d106751991167d", MER_ETOOBIG, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t v = -1;
		int rv = mer_cfg_parse_duration(cases[i].text, &v);
		if (rv != cases[i].rv || (rv == 0 && v != cases[i].value))
			t_fail(__FILE__, __LINE__,
			       "'%s': rv=%d v=%lld, want rv=%d v=%lld",
			       cases[i].text, rv, (long long)v, cases[i].rv,
			       (long long)cases[i].value);
	}
	static const struct {
		int64_t ms;
		const char *text;
	} fmt[] = {
	    {0, "0s"},		{250, "250ms"},	   {30000, "30s"},
	    {5400000, "1h30m"}, {1500, "1s500ms"}, {86400000, "1d"},
	};
	for (size_t i = 0; i < sizeof(fmt) / sizeof(fmt[0]); i++) {
		char out[32];
		int64_t back;
		mer_cfg_format_duration(fmt[i].ms, out, sizeof(out));
		T_EQ_STR(out, fmt[i].text);
		T_OK(mer_cfg_parse_duration(out, &back));
		T_EQ_INT(back, fmt[i].ms);
	}
}

static void test_sizes(void)
{
	static const struct unit_case cases[] = {
	    {"512KiB", 0, 524288},
	    {"4MiB", 0, 4194304},
	    {"4 MiB", 0, 4194304},
	    {"1GiB", 0, 1073741824},
	    {"2TiB", 0, 2199023255552},
	    {"4Mi", 0, 4194304},
	    {"1.5MiB", 0, 1572864},
	    {"1kB", 0, 1000},
	    {"1KB", 0, 1000},
	    {"3MB", 0, 3000000},
	    {"1GB", 0, 1000000000},
	    {"2TB", 0, 2000000000000},
	    {"100B", 0, 100},
	    {"4096", 0, 4096},
	    {"4M", MER_EINVAL, 0},
	    {"4mb", MER_EINVAL, 0},
	    {"1.5B", MER_EINVAL, 0},
	    {"MiB", MER_EINVAL, 0},
	    {"4MiBs", MER_EINVAL, 0},
	    {"-1KiB", MER_EINVAL, 0},
	    {"9999999TiB", MER_ETOOBIG, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int64_t v = -1;
		int rv = mer_cfg_parse_size(cases[i].text, &v);
		if (rv != cases[i].rv || (rv == 0 && v != cases[i].value))
			t_fail(__FILE__, __LINE__,
			       "'%s': rv=%d v=%lld, want rv=%d v=%lld",
			       cases[i].text, rv, (long long)v, cases[i].rv,
			       (long long)cases[i].value);
	}
	static const struct {
		int64_t b;
		const char *text;
	} fmt[] = {
	    {0, "0B"},	       {1024, "1KiB"},		{1572864, "1536KiB"},
	    {4194304, "4MiB"}, {1000000, "1MB"},	{1000, "1kB"},
	    {1023, "1023B"},   {1099511627776, "1TiB"},
	};
	for (size_t i = 0; i < sizeof(fmt) / sizeof(fmt[0]); i++) {
		char out[32];
		int64_t back;
		mer_cfg_format_size(fmt[i].b, out, sizeof(out));
		T_EQ_STR(out, fmt[i].text);
		T_OK(mer_cfg_parse_size(out, &back));
		T_EQ_INT(back, fmt[i].b);
	}
}

static void test_number_forms(void)
{
	struct tcfg c = {0};
	char err[512];
	/* Durations as seconds, sizes as bytes (a whole real too). */
	const char *t =
	    "{\"etcd\": {\"endpoints\": [\"a\"], \"timeout\": 0.25},"
	    " \"link\": {\"max_message\": 2048.0, \"keepalive\": 3},"
	    " \"site\": {\"name\": \"x\"}}";

	T_OK(mer_cfg_load_string(&table, "n", t, strlen(t), &c, err,
				 sizeof(err)));
	T_EQ_INT(c.etcd_timeout_ms, 250);
	T_EQ_INT(c.max_message, 2048);
	T_EXPECT(c.keepalive == 3.0);
	mer_cfg_free(&table, &c);
}

static char *print_to_string(const struct tcfg *c)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return NULL;
	if (mer_cfg_print(&table, c, f) != 0) {
		fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	return buf;
}

static void test_print_redacts(void)
{
	struct tcfg c = {0};
	char err[512];
	char *s, *js;
	json_t *j;

	T_OK(load_fixture("good.json", &c, err, sizeof(err)));
	s = print_to_string(&c);
	T_ASSERT(s != NULL);
	T_EXPECT(strstr(s, "hunter2") == NULL);
	T_CONTAINS(s, "etcd.password = [redacted]\n");
	T_CONTAINS(s, "etcd.endpoints = [\"http://127.0.0.1:2379\","
		      "\"http://127.0.0.1:22379\"]\n");
	T_CONTAINS(s, "etcd.timeout = \"1m30s\"\n");
	T_CONTAINS(s, "link.max_message = \"1536KiB\"\n");
	T_CONTAINS(s, "link.tls = true\n");
	T_CONTAINS(s, "link.workers = 16\n");
	T_CONTAINS(s, "share.max_fraction = 0.75\n");
	T_CONTAINS(s, "jobs.default_priority = \"best-effort\"\n");
	T_CONTAINS(s, "site.pools = [{\"gpus\":64,\"name\":\"a800\"},");
	free(s);

	j = mer_cfg_to_json(&table, &c);
	T_ASSERT(j != NULL);
	js = mer_json_dumps(j);
	T_ASSERT(js != NULL);
	T_EXPECT(strstr(js, "hunter2") == NULL);
	T_CONTAINS(js, "\"password\":\"[redacted]\"");
	T_CONTAINS(js, "\"tls\":{\"ca_file\":\"/dev/null\"}");
	T_CONTAINS(js, "\"link\":{\"cert_file\":\"/dev/null\",\"keepalive\":"
		       "2.5,\"listen\":\"0.0.0.0:7400\",\"max_message\":"
		       "\"1536KiB\",\"tls\":true,\"workers\":16}");
	free(js);

	/* The printed form loads back to the same values. */
	json_object_del(json_object_get(j, "etcd"), "password");
	js = mer_json_dumps(j);
	json_decref(j);
	struct tcfg back = {0};
	T_OK(mer_cfg_load_string(&table, "printed", js, strlen(js), &back, err,
				 sizeof(err)));
	free(js);
	T_EQ_INT(back.max_message, c.max_message);
	T_EQ_INT(back.etcd_timeout_ms, c.etcd_timeout_ms);
	T_EQ_INT(back.prio, c.prio);
	mer_cfg_free(&table, &back);
	mer_cfg_free(&table, &c);

	/* An unset secret says so instead of pretending. */
	T_OK(load_fixture("minimal.json", &c, err, sizeof(err)));
	s = print_to_string(&c);
	T_CONTAINS(s, "etcd.password = null\n");
	T_CONTAINS(s, "etcd.tls.ca_file = null\n");
	free(s);
	mer_cfg_free(&table, &c);
}

struct bad_table {
	const char *what;
	struct mer_cfg_row row;
	const char *want;
};

struct small {
	int64_t a;
	int64_t b;
	char *s;
	int e;
};

static const struct mer_cfg_enum one_enum[] = {{"x", 1}, {NULL, 0}};
static const struct mer_cfg_enum no_enum[] = {{NULL, 0}};

static void test_bad_tables(void)
{
	static const struct bad_table cases[] = {
	    {"bad default",
	     {MER_CFG_ROW_INT64("n.a", struct small, a, 1, 10, "11")},
	     "config table: n.a: bad default: 11 is too large (maximum "
	     "10)"},
	    {"default not JSON",
	     {MER_CFG_ROW_INT64("n.a", struct small, a, 0, 0, "ten")},
	     "config table: n.a: bad default: ten is not valid JSON"},
	    {"bad duration default",
	     {MER_CFG_ROW_DURATION("n.a", struct small, a, 0, 0, "5 s")},
	     "config table: n.a: bad default: '5 s' is not a duration"},
	    {"enum default",
	     {MER_CFG_ROW_ENUM("n.e", struct small, e, one_enum, "y")},
	     "config table: n.e: bad default: 'y' is not one of: x"},
	    {"enum without values",
	     {MER_CFG_ROW_ENUM("n.e", struct small, e, no_enum, NULL)},
	     "config table: n.e: enum row without values"},
	    {"required with default",
	     {MER_CFG_ROW_INT64("n.a", struct small, a, 0, 0, "1"),
	      .flags = MER_CFG_REQUIRED},
	     "config table: n.a: a required row has no default"},
	    {"bad name",
	     {MER_CFG_ROW_INT64("n..a", struct small, a, 0, 0, NULL)},
	     "config table: n..a: names are words"},
	    {"bad name chars",
	     {MER_CFG_ROW_INT64("n.a b", struct small, a, 0, 0, NULL)},
	     "config table: n.a b: names are words"},
	    {"min above max",
	     {MER_CFG_ROW_INT64("n.a", struct small, a, 5, 1, NULL)},
	     "config table: n.a: min above max"},
	    {"both json kinds",
	     {.name = "n.j",
	      .type = MER_CFG_JSON,
	      .offset = 0,
	      .flags = MER_CFG_JSON_OBJECT | MER_CFG_JSON_ARRAY},
	     "config table: n.j: json rows are an object or an array"},
	    {"outside struct",
	     {.name = "n.o",
	      .type = MER_CFG_INT64,
	      .offset = sizeof(struct small)},
	     "config table: n.o: offset 32 outside the 32 byte struct"},
	};
	char err[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct mer_cfg_row r[1] = {cases[i].row};
		struct mer_cfg_table t = MER_CFG_TABLE(struct small, r);
		struct small s = {0};
		int rv = mer_cfg_table_check(&t, err, sizeof(err));
		if (rv != MER_EINVAL ||
		    strncmp(err, cases[i].want, strlen(cases[i].want)) != 0)
			t_fail(__FILE__, __LINE__, "%s: rv=%d err=%s",
			       cases[i].what, rv, err);
		/* A load refuses a bad table too, and leaves s alone. */
		rv =
		    mer_cfg_load_string(&t, "x", "{}", 2, &s, err, sizeof(err));
		T_EQ_INT(rv, MER_EINVAL);
		T_EXPECT(s.a == 0 && s.s == NULL);
	}

	/* Pairs of rows that cannot live together. */
	struct mer_cfg_row dup[] = {
	    {MER_CFG_ROW_INT64("n.a", struct small, a, 0, 0, NULL)},
	    {MER_CFG_ROW_INT64("n.a", struct small, b, 0, 0, NULL)},
	};
	struct mer_cfg_table t = MER_CFG_TABLE(struct small, dup);
	T_EQ_INT(mer_cfg_table_check(&t, err, sizeof(err)), MER_EINVAL);
	T_EQ_STR(err, "config table: n.a: two rows of that name");
	struct mer_cfg_row both[] = {
	    {MER_CFG_ROW_INT64("n", struct small, a, 0, 0, NULL)},
	    {MER_CFG_ROW_INT64("n.b", struct small, b, 0, 0, NULL)},
	};
	struct mer_cfg_table t2 = MER_CFG_TABLE(struct small, both);
	T_EQ_INT(mer_cfg_table_check(&t2, err, sizeof(err)), MER_EINVAL);
	T_EQ_STR(err, "config table: n: is both a setting and a section");
}

static void test_json_default_checked(void)
{
	/* A json row's default goes through check_json too. */
	struct mer_cfg_row r[] = {
	    {MER_CFG_ROW_JSON("pools", struct tcfg, pools,
			      "[{\"name\": \"a\", \"gpus\": -1}]"),
	     .check_json = check_pools},
	};
	struct mer_cfg_table t = MER_CFG_TABLE(struct tcfg, r);
	struct tcfg c = {0};
	char err[512];

	T_EQ_INT(mer_cfg_load_string(&t, "f", "{}", 2, &c, err, sizeof(err)),
		 MER_EINVAL);
	T_EQ_STR(err, "default of pools:1:10: [0].gpus: must be a "
		      "non-negative integer");
	T_EXPECT(c.pools == NULL);
}

static void test_secret_not_echoed(void)
{
	struct small {
		char *token;
		int64_t ttl;
	};
	struct mer_cfg_row r[] = {
	    {MER_CFG_ROW_STRING("auth.token", struct small, token, 8, 16, NULL),
	     .flags = MER_CFG_SECRET},
	    {MER_CFG_ROW_DURATION("auth.ttl", struct small, ttl, 0, 0, NULL),
	     .flags = MER_CFG_SECRET},
	};
	struct mer_cfg_table t = MER_CFG_TABLE(struct small, r);
	struct small c = {0};
	char err[512];
	const char *bad_ttl = "{\"auth\": {\"ttl\": \"hunter2\"}}";
	const char *long_tok =
	    "{\"auth\": {\"token\": \"hunter2hunter2hunter2\"}}";

	T_EQ_INT(mer_cfg_load_string(&t, "s", bad_ttl, strlen(bad_ttl), &c, err,
				     sizeof(err)),
		 MER_EINVAL);
	T_EXPECT(strstr(err, "hunter2") == NULL);
	T_CONTAINS(err, "s:1:18: auth.ttl: the value is not a duration");
	T_EQ_INT(mer_cfg_load_string(&t, "s", long_tok, strlen(long_tok), &c,
				     err, sizeof(err)),
		 MER_EINVAL);
	T_EXPECT(strstr(err, "hunter2") == NULL);
	T_CONTAINS(err, "auth.token: has 21 bytes, more than the maximum");
	T_EXPECT(c.token == NULL);
}

static const struct t_case cases[] = {
    {"table_is_sound", test_table_is_sound},
    {"good_file", test_good_file},
    {"defaults", test_defaults},
    {"bad_files", test_bad_files},
    {"no_half_load", test_no_half_load},
    {"string_sources", test_string_sources},
    {"missing_file", test_missing_file},
    {"readable_check", test_readable_check},
    {"durations", test_durations},
    {"sizes", test_sizes},
    {"number_forms", test_number_forms},
    {"print_redacts", test_print_redacts},
    {"bad_tables", test_bad_tables},
    {"json_default_checked", test_json_default_checked},
    {"secret_not_echoed", test_secret_not_echoed},
};

T_MAIN("config", cases)
