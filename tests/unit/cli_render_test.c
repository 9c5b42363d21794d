/* Tests for meridianctl's pieces that need no broker: figures, tables, the
 * join line, the link default, exit codes, and the site and placement
 * renderers fed with API answers. */
#include "cli/client.h"
#include "cli/ctl.h"
#include "cli/table.h"
#include "common/err.h"
#include "tests/harness.h"

#include <stdio.h>
#include <stdlib.h>

static char *render(void (*fn)(FILE *, const json_t *, long long),
		    const char *json, long long now)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	json_t *v = json_loads(json, 0, NULL);

	if (v)
		fn(f, v, now);
	fclose(f);
	json_decref(v);
	return buf;
}

static void placement_fn(FILE *f, const json_t *v, long long now)
{
	(void)now;
	mer_ctl_print_placement(f, v);
}

static int no_trailing_blanks(const char *s)
{
	for (const char *p = s; *p; p++)
		if (*p == '\n' && p > s && p[-1] == ' ')
			return 0;
	return 1;
}

static void test_durations(void)
{
	char b[32];

	mer_fmt_duration(0, b, sizeof(b));
	T_EQ_STR(b, "0s");
	mer_fmt_duration(45, b, sizeof(b));
	T_EQ_STR(b, "45s");
	mer_fmt_duration(192, b, sizeof(b));
	T_EQ_STR(b, "3m12s");
	mer_fmt_duration(7500, b, sizeof(b));
	T_EQ_STR(b, "2h05m");
	mer_fmt_duration(3 * 86400 + 4 * 3600 + 59, b, sizeof(b));
	T_EQ_STR(b, "3d04h");
	mer_fmt_duration(-1, b, sizeof(b));
	T_EQ_STR(b, "-");
	mer_fmt_age(1000, 988, b, sizeof(b));
	T_EQ_STR(b, "12s ago");
	mer_fmt_age(1000, 0, b, sizeof(b));
	T_EQ_STR(b, "-");
	mer_fmt_time(1764518400, b, sizeof(b));
	T_EQ_STR(b, "2025-11-30 16:00:00Z");
	mer_fmt_usd(12.345, b, sizeof(b));
	T_EQ_STR(b, "$12.35");
	mer_fmt_usd(0.0033, b, sizeof(b));
	T_EQ_STR(b, "$0.0033");
	mer_fmt_usd(-2.5, b, sizeof(b));
	T_EQ_STR(b, "-$2.50");
	mer_fmt_usd(0, b, sizeof(b));
	T_EQ_STR(b, "$0.00");
}

static void test_table(void)
{
	static const char *const h[] = {"A", "LONGER", "Z"};
	struct mer_table *t;
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	T_OK(mer_table_new(h, 3, &t));
	T_OK(mer_table_row(t));
	T_OK(mer_table_cell(t, "%s", "xyz"));
	T_OK(mer_table_cell(t, "%d", 7));
	T_OK(mer_table_cell(t, "%s", ""));
	T_EXPECT(mer_table_cell(t, "x") == MER_EINVAL);
	T_OK(mer_table_row(t));
	T_OK(mer_table_cell(t, "%s", "é")); /* one character, two bytes */
	mer_table_print(t, f, 2);
	fclose(f);
	T_EQ_STR(buf, "  A    LONGER  Z\n"
		      "  xyz  7\n"
		      "  é    -       -\n");
	T_EQ_INT(mer_table_rows(t), 2);
	mer_table_free(t);
	free(buf);
	mer_table_free(NULL);
}

static void test_join_command(void)
{
	char b[512];

	T_OK(mer_ctl_join_command("tcp://b:7400", "abcd2345.s3cr3t",
				  "SHA256:AbC+/x=", "site.json", b, sizeof(b)));
	T_EQ_STR(b, "meridian-agent join --broker tcp://b:7400 --token "
		    "abcd2345.s3cr3t --broker-key SHA256:AbC+/x= --config "
		    "site.json");
	/* What a shell would read is quoted. */
	T_OK(mer_ctl_join_command("tcp://b:7400", "t.s", "SHA256:x",
				  "/etc/my site's.json", b, sizeof(b)));
	T_CONTAINS(b, "--config '/etc/my site'\\''s.json'");
	T_OK(mer_ctl_join_command("tcp://b:7400", "t.s", "SHA256:x", "$(rm)", b,
				  sizeof(b)));
	T_CONTAINS(b, "--config '$(rm)'");
	T_EXPECT(mer_ctl_join_command("tcp://b:7400", "t.s", "SHA256:x",
				      "site.json", b, 40) == MER_ETOOBIG);
}

static void test_default_link(void)
{
	char b[128];

	T_OK(mer_ctl_default_link("http://127.0.0.1:8080", b, sizeof(b)));
	T_EQ_STR(b, "tcp://127.0.0.1:7400");
	T_OK(mer_ctl_default_link("https://broker.example/api", b, sizeof(b)));
	T_EQ_STR(b, "tcp://broker.example:7400");
	T_OK(mer_ctl_default_link("https://u@[::1]:8443/", b, sizeof(b)));
	T_EQ_STR(b, "tcp://[::1]:7400");
	T_EXPECT(mer_ctl_default_link("http://", b, sizeof(b)) != 0);
}

static void test_exit_codes(void)
{
	T_EQ_INT(mer_ctl_exit_for_status(200), MER_CTL_OK);
	T_EQ_INT(mer_ctl_exit_for_status(201), MER_CTL_OK);
	T_EQ_INT(mer_ctl_exit_for_status(400), MER_CTL_EXIT_INVALID);
	T_EQ_INT(mer_ctl_exit_for_status(409), MER_CTL_EXIT_INVALID);
	T_EQ_INT(mer_ctl_exit_for_status(413), MER_CTL_EXIT_INVALID);
	T_EQ_INT(mer_ctl_exit_for_status(422), MER_CTL_EXIT_INVALID);
	T_EQ_INT(mer_ctl_exit_for_status(401), MER_CTL_EXIT_AUTH);
	T_EQ_INT(mer_ctl_exit_for_status(403), MER_CTL_EXIT_AUTH);
	T_EQ_INT(mer_ctl_exit_for_status(404), MER_CTL_EXIT_NOTFOUND);
	T_EQ_INT(mer_ctl_exit_for_status(500), MER_CTL_EXIT_SERVER);
	T_EQ_INT(mer_ctl_exit_for_status(503), MER_CTL_EXIT_SERVER);
	T_EQ_INT(mer_ctl_exit_for_status(302), MER_CTL_EXIT_SERVER);
}

static void test_escape_and_errors(void)
{
	char b[64];
	struct mer_ctl_answer a = {0};

	T_OK(mer_ctl_escape("a b/c:d", b, sizeof(b)));
	T_EQ_STR(b, "a%20b%2Fc%3Ad");
	T_EXPECT(mer_ctl_escape("////", b, 8) == MER_ETOOBIG);
	a.status = 404;
	a.json = json_pack("{s:s, s:s}", "error", "not_found", "message",
			   "no job j1");
	mer_ctl_answer_error(&a, b, sizeof(b));
	T_EQ_STR(b, "no job j1 (404 not_found)");
	json_decref(a.json);
	a.json = NULL;
	a.status = 502;
	a.body = "<html>bad gateway</html>\nmore";
	a.len = strlen(a.body);
	mer_ctl_answer_error(&a, b, sizeof(b));
	T_EQ_STR(b, "the broker answered 502: <html>bad gateway</html>");
}

static void test_client_refuses(void)
{
	struct mer_ctl_client c;
	char err[256];

	T_EXPECT(mer_ctl_client_init(&c, "127.0.0.1:8080", NULL, NULL, 0, err,
				     sizeof(err)) == MER_EINVAL);
	T_CONTAINS(err, "http://");
	/* A token with a line break would smuggle a header. */
	T_EXPECT(mer_ctl_client_init(&c, "http://h", "tok\r\nX-Evil: 1", NULL,
				     0, err, sizeof(err)) == MER_EINVAL);
	T_EXPECT(strstr(err, "tok") == NULL || strstr(err, "token") != NULL);
	T_OK(mer_ctl_client_init(&c, "http://h:1///", "t", NULL, 0, err,
				 sizeof(err)));
	T_EQ_STR(c.base, "http://h:1");
	mer_ctl_client_close(&c);
	T_EQ_STR(c.token, "");
}

static const char sites_json[] =
    "[{\"name\": \"bj-a800\", \"region\": \"cn-north-1\", \"health\": "
    "\"healthy\", \"drained\": true, \"revoked\": false, \"lost\": false, "
    "\"source\": \"joined\", \"last_report_age_s\": 12, \"summary\": "
    "{\"pools\": [{\"name\": \"p1\", \"resources\": {\"cpu\": {\"total\": "
    "64, \"free\": 8}, \"gpu:a800\": {\"total\": 64, \"free\": 32, "
    "\"pending\": 16}, \"gpu:a100\": {\"total\": 8, \"free\": 0}}}, "
    "{\"name\": \"p2\", \"resources\": {\"gpu:a800\": {\"total\": 8, "
    "\"free\": 8, \"pending\": 4}}}]}},"
    " {\"name\": \"cpu-only\", \"region\": \"eu\", \"health\": \"down\", "
    "\"revoked\": true, \"lost\": true, \"source\": \"joined\", "
    "\"last_report_age_s\": null, \"summary\": {\"pools\": [{\"name\": "
    "\"c\", \"resources\": {\"cpu\": {\"total\": 4, \"free\": 4}}}]}},"
    " {\"name\": \"nosum\", \"source\": \"report\"}]";

static void sites_fn(FILE *f, const json_t *v, long long now)
{
	mer_ctl_print_sites(f, v, now);
}

static void test_sites_table(void)
{
	char *s = render(sites_fn, sites_json, 1000);

	T_ASSERT(s != NULL);
	T_CONTAINS(s, "SITE      REGION      HEALTH   STATUS        GPUS "
		      "FREE/TOTAL");
	/* Models in name order, summed over pools; pending summed too. */
	T_CONTAINS(s, "a100 0/8, a800 40/72");
	T_CONTAINS(s, "drained");
	T_CONTAINS(s, "20 ");
	T_CONTAINS(s, "12s ago");
	T_CONTAINS(s, "revoked,lost");
	T_CONTAINS(s, "none");
	T_CONTAINS(s, "nosum");
	T_CONTAINS(s, "never");
	T_EXPECT(no_trailing_blanks(s));
	free(s);
}

static const char placement_json[] =
    "{\"complete\": true, \"method\": \"chain-dp\", \"policy_version\": 3, "
    "\"money_usd\": 12.5, \"makespan_s\": 4000, \"placed_at\": 1764518400, "
    "\"stages\": [{\"name\": \"train\", \"status\": \"placed\", \"site\": "
    "\"bj-a800\", \"gpu\": \"gpu:a800\", \"note\": \"best of 2\", "
    "\"feasible\": 2, \"rejections\": {\"capacity\": 1}, \"replicas\": "
    "[{\"site\": \"bj-a800\", \"replicas\": 1, \"gpu\": \"gpu:a800\"}], "
    "\"candidates\": [{\"site\": \"bj-a800\", \"chosen\": true, \"gpu\": "
    "\"gpu:a800\", \"score\": {\"compute_usd\": 10, \"egress_usd\": 0.5, "
    "\"transfer_s\": 60, \"wait_s\": 600, \"runtime_s\": 3600, "
    "\"policy_usd\": -1, \"money_usd\": 10.5, \"total\": 20.25}}, "
    "{\"site\": \"sh-h800\", \"gpu\": \"gpu:h800\", \"score\": "
    "{\"compute_usd\": 14, \"egress_usd\": 0, \"transfer_s\": 0, "
    "\"wait_s\": 300, \"runtime_s\": 3600, \"policy_usd\": 0, "
    "\"money_usd\": 14, \"total\": 22}}, {\"site\": \"fra-a100\", "
    "\"reason\": \"capacity\", \"rejected\": \"capacity: needs 8 gpu:a100, "
    "4 free to the federation\"}]}, {\"name\": \"serve\", \"status\": "
    "\"pending\", \"site\": null, \"note\": \"no site has capacity\", "
    "\"feasible\": 0, \"rejections\": {}, \"candidates\": []}]}";

static void test_placement_table(void)
{
	char *s = render(placement_fn, placement_json, 0);

	T_ASSERT(s != NULL);
	T_CONTAINS(s, "Placement: complete, method chain-dp, policy 3, money "
		      "$12.50, makespan 1h06m, placed 2025-11-30 16:00:00Z\n");
	T_CONTAINS(s, "Stage train: placed on bj-a800 (a800); 2 feasible");
	T_CONTAINS(s, "  SITE       GPU   COMPUTE  EGRESS  TRANSFER  WAIT    "
		      "RUNTIME  POLICY  SCORE\n");
	T_CONTAINS(s, "  bj-a800 *  a800  $10.00   $0.50   1m00s     10m00s  "
		      "1h00m    -$1.00  20.25\n");
	T_CONTAINS(s, "  fra-a100  capacity: needs 8 gpu:a100, 4 free to the "
		      "federation\n");
	T_CONTAINS(s, "rejections by reason: capacity 1\n");
	T_CONTAINS(s, "Stage serve: pending (no site can take it now)");
	T_CONTAINS(s, "no site has capacity");
	T_EXPECT(strstr(s, "replicas:") == NULL); /* one replica: no line */
	T_EXPECT(no_trailing_blanks(s));
	free(s);
}

static void test_help_and_usage_in_process(void)
{
	char *ob = NULL, *eb = NULL;
	size_t ol = 0, el = 0;
	FILE *o = open_memstream(&ob, &ol), *e = open_memstream(&eb, &el);
	char *help[] = {"meridianctl", "describe", "job", "--help", NULL};
	char *bad[] = {"meridianctl", "cancel", NULL};

	T_EQ_INT(mer_ctl_main(4, help, o, e), 0);
	T_EQ_INT(mer_ctl_main(2, bad, o, e), MER_CTL_EXIT_USAGE);
	fclose(o);
	fclose(e);
	T_CONTAINS(ob, "usage: meridianctl describe job ID");
	T_EQ_STR(eb, "meridianctl: missing ID (see 'meridianctl cancel "
		     "--help')\n");
	free(ob);
	free(eb);
}

static const struct t_case cases[] = {
    {"durations", test_durations},
    {"table", test_table},
    {"join_command", test_join_command},
    {"default_link", test_default_link},
    {"exit_codes", test_exit_codes},
    {"escape_and_errors", test_escape_and_errors},
    {"client_refuses", test_client_refuses},
    {"sites_table", test_sites_table},
    {"placement_table", test_placement_table},
    {"help_and_usage_in_process", test_help_and_usage_in_process},
};

T_MAIN("cli_render", cases)
