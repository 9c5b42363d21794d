/*
 * The harness behind tests/harness.h: runs a table of cases, times them and
 * prints the summary line that tests/run.sh reads.
 */
#include "tests/harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "common/err.h"

static int cur_failed;
static int cur_skipped;

const char *t_strerror(int err)
{
	return mer_strerror(err);
}

void t_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	cur_failed = 1;
	fprintf(stdout, "    %s:%d: ", file, line);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

void t_skip(const char *fmt, ...)
{
	va_list ap;

	cur_skipped = 1;
	fprintf(stdout, "    skipped: ");
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

int t_case_failed(void)
{
	return cur_failed;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int t_run(const char *suite, const struct t_case *cases, size_t n, int argc,
	  char **argv)
{
	int passed = 0, failed = 0, skipped = 0;
	const char *filter = argc > 1 ? argv[1] : NULL;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (size_t i = 0; i < n; i++) {
		if (filter && !strstr(cases[i].name, filter))
			continue;
		cur_failed = 0;
		cur_skipped = 0;
		printf("run  %s/%s\n", suite, cases[i].name);
		double t0 = now_ms();
		cases[i].fn();
		double dt = now_ms() - t0;
		if (cur_failed) {
			failed++;
			printf("FAIL %s/%s (%.0f ms)\n", suite, cases[i].name, dt);
		} else if (cur_skipped) {
			skipped++;
			printf("skip %s/%s\n", suite, cases[i].name);
		} else {
			passed++;
			printf("ok   %s/%s (%.0f ms)\n", suite, cases[i].name, dt);
		}
	}
	if (skipped)
		printf("%s: %d passed, %d failed, %d skipped\n", suite, passed,
		       failed, skipped);
	else
		printf("%s: %d passed, %d failed\n", suite, passed, failed);
	return failed ? 1 : 0;
}
