"""Writes small MovieLens 100K / 1M releases in their original formats (ISO-8859-1)."""
import pathlib

GENRES_100K = 19


def write_100k(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    flags = {  # item -> genre flag positions (0 unknown, 1 Action, 4 Children's, 5 Comedy, 8 Drama)
        "1": [4, 5], "2": [1], "3": [8], "4": [0]}
    titles = {"1": "Toy Story (1995)", "2": "GoldenEye (1995)", "3": "Café au lait (1993)",
              "4": "Étoile (1989)"}
    lines = []
    for item, title in titles.items():
        genre = ["1" if g in flags[item] else "0" for g in range(GENRES_100K)]
        lines.append("|".join([item, title, "01-Jan-1995", "", "http://example/x"] + genre))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("iso-8859-1"))
    ratings = []
    for user in ("1", "2", "3"):
        for n, item in enumerate(titles):
            ratings.append(f"{user}\t{item}\t{(n + int(user)) % 5 + 1}\t{880000000 + n * 100 + int(user)}")
    (folder / "u.data").write_text("\n".join(ratings) + "\n")
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|30|M|writer|32067\n")
    return folder


def write_1m(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    movies = ["1::Toy Story (1995)::Animation|Children's|Comedy", "2::Heat (1995)::Action|Crime|Thriller",
              "3::Misérables, Les (1995)::Drama"]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("iso-8859-1"))
    ratings = []
    for user in ("1", "2"):
        for n, item in enumerate(("1", "2", "3")):
            ratings.append(f"{user}::{item}::{(n + int(user)) % 5 + 1}::{978300000 + n * 10 + int(user)}")
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return folder
