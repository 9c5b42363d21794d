/* Tests for common/log: logfmt shape, quoting, levels and secret redaction. */
#include "common/err.h"
#include "common/log.h"
#include "tests/harness.h"

#include <stdio.h>
#include <stdlib.h>

static char *capture(void (*emit)(void))
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	mer_log_set_output(f);
	emit();
	mer_log_set_output(NULL);
	fclose(f);
	return buf;
}

static void emit_basic(void)
{
	mer_info("site joined", "site=%s gpus=%d ratio=%.2f", "east-1", 8, 0.5);
}

static void test_shape(void)
{
	char *s = capture(emit_basic);
	T_CONTAINS(s, "ts=");
	T_CONTAINS(s, "level=info msg=\"site joined\" site=east-1 gpus=8 "
		      "ratio=0.50\n");
	T_EQ_INT(s[0], 't');
	free(s);
}

static void emit_quoting(void)
{
	mer_warn("odd", "a=%s b=%s c=%s d=%s", "two words", "q\"uote",
		 "line\nbreak", "");
}

static void test_quoting(void)
{
	char *s = capture(emit_quoting);
	T_CONTAINS(s, "a=\"two words\"");
	T_CONTAINS(s, "b=\"q\\\"uote\"");
	T_CONTAINS(s, "c=\"line\\nbreak\"");
	T_CONTAINS(s, "d=\"\"");
	/* one event, one line */
	T_ASSERT(strchr(s, '\n') == s + strlen(s) - 1);
	free(s);
}

static void emit_secret(void)
{
	mer_error("join", "site=%s token=%s admin_token=%s password=%s",
		  "a", "abc.SECRETVALUE", "SECRET2", "SECRET3");
}

static void test_redaction(void)
{
	char *s = capture(emit_secret);
	T_ASSERT(s != NULL);
	T_EXPECT(strstr(s, "SECRET") == NULL);
	T_CONTAINS(s, "token=[redacted]");
	T_CONTAINS(s, "admin_token=[redacted]");
	T_CONTAINS(s, "site=a");
	free(s);

	char out[64];
	mer_redact_token("abcd2345.supersecret", out, sizeof(out));
	T_EQ_STR(out, "abcd2345.[redacted]");
	mer_redact_token("k3x9.supersecret", out, sizeof(out));
	T_EQ_STR(out, "[redacted]"); /* not a token id: no part shown */
	mer_redact_token("nodot", out, sizeof(out));
	T_EQ_STR(out, "[redacted]");
	mer_redact_token(NULL, out, sizeof(out));
	T_EQ_STR(out, "[redacted]");
}

static void emit_levels(void)
{
	mer_log_set_level(MER_LOG_WARN);
	mer_info("hidden", NULL);
	mer_warn("shown", NULL);
	mer_log_set_level(MER_LOG_INFO);
}

static void test_levels(void)
{
	char *s = capture(emit_levels);
	T_EXPECT(strstr(s, "hidden") == NULL);
	T_CONTAINS(s, "msg=shown");
	free(s);

	enum mer_log_level l;
	T_OK(mer_log_level_parse("debug", &l));
	T_EQ_INT(l, MER_LOG_DEBUG);
	T_EXPECT(mer_log_level_parse("loud", &l) != 0);
}

static void emit_long(void)
{
	static char big[20000];
	memset(big, 'x', sizeof(big) - 1);
	mer_info("long", "v=%s", big);
}

static void test_long_line_stays_one_line(void)
{
	char *s = capture(emit_long);
	T_ASSERT(s != NULL);
	T_EXPECT(strlen(s) <= 8192);
	T_ASSERT(strchr(s, '\n') == s + strlen(s) - 1);
	free(s);
}

static void test_errors_have_text(void)
{
	for (int e = 0; e <= MER_EUNSUPPORTED; e++) {
		T_EXPECT(strcmp(mer_strerror(e), "unknown error") != 0);
		T_EXPECT(strcmp(mer_errname(e), "unknown") != 0);
	}
	T_EQ_STR(mer_strerror(9999), "unknown error");
	T_EQ_STR(mer_errname(MER_EUNREACHABLE), "unreachable");
}

static const struct t_case cases[] = {
	{"shape", test_shape},
	{"quoting", test_quoting},
	{"redaction", test_redaction},
	{"levels", test_levels},
	{"long_line_stays_one_line", test_long_line_stays_one_line},
	{"errors_have_text", test_errors_have_text},
};

T_MAIN("log", cases)
