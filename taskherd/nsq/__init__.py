"""Everything that speaks NSQ: the `Publisher` (producers), the `Feed` (a consumer's own connection),
and the message codec (`TaskRef`). Nothing else in taskherd imports pynsq."""
