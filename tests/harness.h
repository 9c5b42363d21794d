/*
 * Meridian's small in-tree test harness. A test program is a table of named
 * cases; each case is a void function using the T_* checks. The program
 * prints one line per case and ends with "<suite>: N passed, M failed[, K
 * skipped]", which tests/run.sh adds up. Not a mocking framework.
 */
#ifndef MERIDIAN_HARNESS_H
#define MERIDIAN_HARNESS_H

#include <stddef.h>
#include <string.h>

struct t_case {
	const char *name;
	void (*fn)(void);
};

/* Records a failure of the running case (message printed at once). */
void t_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Marks the running case skipped, with the reason. Call, then return. */
void t_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Non-zero once the running case has failed. */
int t_case_failed(void);

/* Runs the cases (those whose name contains argv[1], when given); returns
 * the exit status for main: 0 when none failed. */
int t_run(const char *suite, const struct t_case *cases, size_t n, int argc,
	  char **argv);

#define T_MAIN(suite, cases)                                                   \
	int main(int argc, char **argv)                                        \
	{                                                                      \
		return t_run(suite, cases, sizeof(cases) / sizeof(cases[0]),   \
			     argc, argv);                                      \
	}

/* T_ASSERT returns from the case on failure; T_EXPECT carries on. */
#define T_EXPECT(c)                                                            \
	do {                                                                   \
		if (!(c))                                                      \
			t_fail(__FILE__, __LINE__, "expected %s", #c);         \
	} while (0)
#define T_ASSERT(c)                                                            \
	do {                                                                   \
		if (!(c)) {                                                    \
			t_fail(__FILE__, __LINE__, "assertion %s", #c);        \
			return;                                                \
		}                                                              \
	} while (0)
#define T_EQ_INT(a, b)                                                         \
	do {                                                                   \
		long long t_a_ = (long long)(a), t_b_ = (long long)(b);        \
		if (t_a_ != t_b_)                                              \
			t_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld",   \
			       #a, #b, t_a_, t_b_);                            \
	} while (0)
#define T_EQ_STR(a, b)                                                         \
	do {                                                                   \
		const char *t_a_ = (a), *t_b_ = (b);                           \
		if (!t_a_ || !t_b_ || strcmp(t_a_, t_b_) != 0)                 \
			t_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", \
			       #a, #b, t_a_ ? t_a_ : "(null)",                 \
			       t_b_ ? t_b_ : "(null)");                        \
	} while (0)
#define T_CONTAINS(hay, needle)                                                \
	do {                                                                   \
		const char *t_h_ = (hay), *t_n_ = (needle);                    \
		if (!t_h_ || !t_n_ || !strstr(t_h_, t_n_))                     \
			t_fail(__FILE__, __LINE__, "%s contains \"%s\": \"%s\"", \
			       #hay, t_n_ ? t_n_ : "(null)",                   \
			       t_h_ ? t_h_ : "(null)");                        \
	} while (0)
/* For functions returning a Meridian error code: prints its text. */
#define T_OK(expr)                                                             \
	do {                                                                   \
		int t_rv_ = (expr);                                            \
		if (t_rv_ != 0) {                                              \
			t_fail(__FILE__, __LINE__, "%s returned %d (%s)",      \
			       #expr, t_rv_, t_strerror(t_rv_));               \
			return;                                                \
		}                                                              \
	} while (0)

const char *t_strerror(int err);

#endif
