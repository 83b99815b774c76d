# examples/peers/app.psgi: a PSGI app for Starman and Starlet, which take
# prefork's socket from SERVER_STARTER_PORT. Each request takes 0.2 s, so that
# a stop signal that drops requests in flight (TERM for Starman) shows.
my $app = sub {
  select(undef, undef, undef, 0.2);
  return [200, ['Content-Type' => 'text/plain'], [($ENV{PEER} || 'psgi') . " slot $ENV{PREFORK_WORKER} pid $$\n"]];
};
