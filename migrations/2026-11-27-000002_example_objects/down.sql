DROP TABLE IF EXISTS t_exported_object;
DROP TABLE IF EXISTS t_object;
