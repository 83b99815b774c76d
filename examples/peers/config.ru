# examples/peers/config.ru: a Rack app for puma (which takes the LISTEN_FDS
# socket whose address its -b names) and unicorn (which takes LISTEN_FDS). Each
# request takes 0.2 s, so that a stop signal that drops requests in flight
# (TERM for unicorn) shows.
run lambda { |env| sleep 0.2; [200, {"content-type" => "text/plain"}, ["#{ENV['PEER'] || 'rack'} slot #{ENV['PREFORK_WORKER']} pid #{Process.pid}\n"]] }
